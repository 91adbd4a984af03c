import { useCallback, useEffect, useState, type ReactNode } from "react";
import { failureOf, getMonitoring, type Failure } from "../api/client";
import type { Drift, Monitoring, Performance, Proportion, ScoreDrift } from "../api/types";
import { formatClock, proportionParts } from "../lib/worklist";
import { ApiErrorNotice } from "./ErrorNotice";
import { TableHead } from "./TableHead";

interface Props {
  /** The tab is shown: fetched each time it is. */
  active: boolean;
}

const COUNTS = [
  ["true_positive", "TP", "true positives: flagged, fracture read"],
  ["false_positive", "FP", "false positives: flagged, no fracture read"],
  ["true_negative", "TN", "true negatives: not flagged, no fracture read"],
  ["false_negative", "FN", "false negatives: not flagged, fracture read"],
] as const;

const MEASURES = [
  ["sensitivity", "Sensitivity"],
  ["specificity", "Specificity"],
  ["ppv", "PPV"],
  ["npv", "NPV"],
] as const;

function PerformanceTable({
  title,
  groupLabel,
  rows,
  testId,
}: {
  title: string;
  groupLabel: string;
  rows: [string, Performance][];
  testId: string;
}) {
  const id = `${testId}-title`;
  return (
    <div className="monitoring__group">
      <h3 id={id}>{title}</h3>
      {rows.length === 0 ? (
        <p className="muted">No reviewed study yet.</p>
      ) : (
        // Focusable: a narrow window scrolls it sideways, by keyboard too.
        <div className="table-wrap" role="region" aria-labelledby={id} tabIndex={0}>
          <table className="batch__table monitoring__table" data-testid={testId}>
            <caption className="visually-hidden">
              {title}: the product&apos;s calls against the latest read; under each figure its Wilson 95 % interval.
            </caption>
            <thead>
              <tr>
                <th scope="col">{groupLabel}</th>
                <th scope="col" className="num">
                  Reviewed
                </th>
                {COUNTS.map(([key, label, title]) => (
                  <th key={key} scope="col" className="num">
                    <abbr title={title}>{label}</abbr>
                  </th>
                ))}
                <th scope="col" className="num">
                  No call
                </th>
                {MEASURES.map(([key, label]) => (
                  <th key={key} scope="col" className="num">
                    {label}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {rows.map(([group, p]) => (
                <tr key={group} data-testid="monitoring-row" data-group={group}>
                  <th scope="row">{group}</th>
                  <td className="num" data-testid="monitoring-reviewed">
                    {p.reviewed}
                  </td>
                  {COUNTS.map(([key]) => (
                    <td key={key} className="num">
                      {p[key]}
                    </td>
                  ))}
                  <td className="num">{p.no_call}</td>
                  {MEASURES.map(([key]) => (
                    <td key={key} className="num" data-measure={key}>
                      <Measure p={p[key]} />
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

/** The figure, and its interval below it in small print. */
function Measure({ p }: { p: Proportion }) {
  const parts = proportionParts(p);
  if (!parts) return <span className="muted">—</span>;
  return (
    <>
      <span className="measure__value">{parts.estimate}</span>
      {parts.interval && (
        <span className="measure__ci">
          <span className="visually-hidden">95 % interval </span>
          {parts.interval}
        </span>
      )}
    </>
  );
}

const sorted = <T,>(groups: Record<string, T>): [string, T][] =>
  Object.entries(groups).sort(([a], [b]) => a.localeCompare(b));

const NOT_CT = "Not a CT slice";
const OUTSIDE = "CT outside the model's range";

/** "Shift" past the bound, else nothing: the warning is the exception. */
function Warning({ on, label }: { on: boolean; label: string }) {
  return on ? <span className="badge badge--small badge--positive">{label}</span> : null;
}

/** A table in the monitoring layout: a scrollable, labelled region. */
function DriftTable({ title, testId, children }: { title: string; testId: string; children: ReactNode }) {
  const id = `${testId}-title`;
  return (
    <div className="monitoring__group">
      <h4 id={id}>{title}</h4>
      <div className="table-wrap" role="region" aria-labelledby={id} tabIndex={0}>
        <table className="batch__table monitoring__table" data-testid={testId}>
          {children}
        </table>
      </div>
    </div>
  );
}

/** Series the PACS pipeline gave up on (identity, permanent, error): never in the worklist, so named here. */
function PipelineFailures({ counts }: { counts: Record<string, number> }) {
  const classes = sorted(counts).filter(([, count]) => count > 0);
  const total = classes.reduce((sum, [, count]) => sum + count, 0);
  if (total === 0) return null;
  return (
    <p className="notice notice--warn" role="status" data-testid="monitoring-pipeline-failures">
      {total} series the PACS pipeline gave up on and has not analysed since (
      {classes.map(([name, count]) => `${name} ${count}`).join(", ")}): listed by <code>GET /pipeline/failures</code>;
      once the cause is mended, <code>python -m pacs requeue</code> tries them again.
    </p>
  );
}

/**
 * What the product sees, reviewed or not (GET /monitoring's drift): the PSI of the study scores
 * against the model card's out-of-fold distribution, and the weekly share of the CT gate's refusals.
 */
function DriftTables({ drift }: { drift: Drift }) {
  const windows: [string, ScoreDrift][] = [
    ...(drift.recent ? ([[`Last ${drift.recent_days} days`, drift.recent]] as [string, ScoreDrift][]) : []),
    ...sorted(drift.psi_by_week),
  ];
  const refusals = sorted(drift.refusals_by_week);
  return (
    <div className="monitoring__drift" data-testid="monitoring-drift">
      <h3>Drift</h3>
      <p className="hint">
        Every analysed study counts, reviewed or not. Score drift: the population stability index (PSI) of the study
        scores against the model card&apos;s out-of-fold scores, flagged above {drift.psi_warn}. Refusals: each
        week&apos;s share of &ldquo;{NOT_CT}&rdquo; and &ldquo;{OUTSIDE}&rdquo; answers, flagged above{" "}
        {Math.round(drift.refusal_warn * 100)} %.
      </p>
      {drift.psi_unavailable ? (
        <p className="muted" data-testid="monitoring-psi-unavailable">
          Score drift: not available ({drift.psi_unavailable}).
        </p>
      ) : windows.length === 0 ? (
        <p className="muted">Score drift: no analysed study of {drift.model} yet.</p>
      ) : (
        <DriftTable title={`Score drift (PSI) of ${drift.model}`} testId="monitoring-psi">
          <TableHead
            columns={[{ label: "Window" }, { label: "Studies", num: true }, { label: "PSI", num: true }, { label: "Flag" }]}
          />
          <tbody>
            {windows.map(([window, figure]) => (
              <tr key={window} data-testid="monitoring-psi-row">
                <th scope="row">{window}</th>
                <td className="num">{figure.n}</td>
                <td className="num">{figure.psi == null ? "—" : figure.psi.toFixed(2)}</td>
                <td>
                  <Warning on={figure.warning} label="Shift" />
                </td>
              </tr>
            ))}
          </tbody>
        </DriftTable>
      )}
      {refusals.length > 0 && (
        <DriftTable title="Refusals by week of arrival" testId="monitoring-refusals">
          <TableHead
            columns={[
              { label: "Week" },
              { label: "Analysed", num: true },
              { label: NOT_CT, num: true },
              { label: OUTSIDE, num: true },
            ]}
          />
          <tbody>
            {refusals.map(([week, answers]) => (
              <tr key={week} data-testid="monitoring-refusal-row">
                <th scope="row">{week}</th>
                <td className="num">{answers[NOT_CT]?.total ?? 0}</td>
                {[NOT_CT, OUTSIDE].map((answer) => {
                  const share = answers[answer];
                  return (
                    <td key={answer} className="num" data-answer={answer}>
                      {share ? <Measure p={share} /> : "—"} <Warning on={!!share?.warning} label="High" />
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </DriftTable>
      )}
    </div>
  );
}

/**
 * Live performance (GET /monitoring): the product's calls against the radiologists' reads,
 * overall, per model version, per scanner and per ISO week of arrival.
 */
export function MonitoringView({ active }: Props) {
  const [data, setData] = useState<Monitoring | null>(null);
  const [error, setError] = useState<Failure | null>(null);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);

  const refresh = useCallback(() => {
    getMonitoring()
      .then((m) => {
        setData(m);
        setError(null);
        setUpdatedAt(Date.now());
      })
      .catch((err: unknown) => setError(failureOf(err)));
  }, []);

  useEffect(() => {
    if (active) refresh();
  }, [active, refresh]);

  return (
    <section className="panel monitoring" aria-labelledby="monitoring-title" data-testid="monitoring">
      <div className="panel__head panel__head--row">
        <h2 id="monitoring-title">Monitoring</h2>
        <button type="button" className="btn btn--ghost btn--small" onClick={refresh}>
          Refresh
        </button>
      </div>
      <p className="hint">
        The product&apos;s calls (flagged or not) against the latest read of each reviewed study, each figure with its
        Wilson 95 % interval below it. &ldquo;Not a CT slice&rdquo; made no call: counted under No call, never as a
        negative.{" "}
        {updatedAt && <span data-testid="monitoring-updated">Updated {formatClock(updatedAt)}</span>}
      </p>
      {error && <ApiErrorNotice failure={error} testId="monitoring-error" />}
      {data && data.overall.reviewed === 0 && (
        <p className="empty-note" data-testid="monitoring-empty">
          No study has been reviewed yet. Record reads in the Worklist; sensitivity, specificity, PPV and NPV appear here
          as they come in.
        </p>
      )}
      {data && data.overall.reviewed > 0 && (
        <>
          <PerformanceTable title="Overall" groupLabel="Group" rows={[["All studies", data.overall]]} testId="monitoring-overall" />
          <PerformanceTable
            title="By model version"
            groupLabel="Model"
            rows={sorted(data.by_model_version)}
            testId="monitoring-model"
          />
          <PerformanceTable title="By scanner" groupLabel="Scanner" rows={sorted(data.by_scanner)} testId="monitoring-scanner" />
          <PerformanceTable title="By week of arrival" groupLabel="Week" rows={sorted(data.by_week)} testId="monitoring-week" />
        </>
      )}
      {data && <PipelineFailures counts={data.pipeline_failures} />}
      {data && <DriftTables drift={data.drift} />}
    </section>
  );
}
