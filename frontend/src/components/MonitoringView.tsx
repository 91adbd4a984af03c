import { useCallback, useEffect, useState } from "react";
import { failureOf, getMonitoring, type Failure } from "../api/client";
import type { Monitoring, Performance, Proportion } from "../api/types";
import { formatClock, proportionParts } from "../lib/worklist";
import { ApiErrorNotice } from "./ErrorNotice";

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

const sorted = (groups: Record<string, Performance>) =>
  Object.entries(groups).sort(([a], [b]) => a.localeCompare(b));

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
    </section>
  );
}
