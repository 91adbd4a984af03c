import { useRef, useState, type ReactNode } from "react";
import type { ModelCard } from "../api/types";
import { closeDialog, openDialog } from "../lib/dialog";
import { CloseIcon } from "./ReadingBits";

function formatRatio(x: number): string {
  if (x > 0 && x < 0.001) return "<0.001";
  return x.toFixed(3);
}

const ACRONYMS: Record<string, string> = {
  auc: "AUC",
  roc: "ROC",
  pr: "PR",
  ece: "ECE",
  f1: "F1",
  ppv: "PPV",
  npv: "NPV",
  tp: "TP",
  tn: "TN",
  fp: "FP",
  fn: "FN",
  ci: "CI",
  ct: "CT",
  cnn: "CNN",
  id: "ID",
  ood: "OOD",
  tpr: "TPR",
  fpr: "FPR",
  n: "n",
};

const LABELS: Record<string, string> = {
  recall: "Sensitivity (recall)",
  sensitivity: "Sensitivity",
  specificity: "Specificity",
  precision: "Precision (PPV)",
  auc: "ROC AUC",
  roc_auc: "ROC AUC",
  pr_auc: "PR AUC",
  brier: "Brier score",
  ece: "Calibration error (ECE)",
  n: "Images (n)",
};

export function humanise(key: string): string {
  if (LABELS[key.toLowerCase()]) return LABELS[key.toLowerCase()]!;
  const words = key.replace(/([a-z])([A-Z])/g, "$1 $2").split(/[_\s-]+/).filter(Boolean);
  return words
    .map((w, i) => ACRONYMS[w.toLowerCase()] ?? (i === 0 ? w[0]!.toUpperCase() + w.slice(1) : w))
    .join(" ");
}

/** Metrics that are fractions even when they happen to be exactly 0 or 1. */
const RATIO_KEY =
  /^(threshold|accuracy|precision|recall|sensitivity|specificity|f1|auc|roc_auc|pr_auc|ppv|npv|tpr|fpr|brier|ece|loss|balanced_accuracy)$/i;

export function formatNumber(x: number, key?: string): string {
  if (key && RATIO_KEY.test(key)) return formatRatio(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  if (Math.abs(x) < 1) return formatRatio(x);
  return x.toLocaleString("en-US", { maximumFractionDigits: 2 });
}

type Cells = { tn: number; fp: number; fn: number; tp: number };

/** Accepts [[tn, fp], [fn, tp]] (rows = actual normal/fracture) or {tn, fp, fn, tp}. */
export function asConfusion(value: unknown): Cells | null {
  if (Array.isArray(value) && value.length === 2 && value.every((r) => Array.isArray(r) && r.length === 2)) {
    const [[tn, fp], [fn, tp]] = value as number[][] as [[number, number], [number, number]];
    if ([tn, fp, fn, tp].every((n) => typeof n === "number")) return { tn, fp, fn, tp };
  }
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const v = value as Record<string, unknown>;
    const pick = (...keys: string[]) => keys.map((k) => v[k]).find((x) => typeof x === "number") as number | undefined;
    const cells = {
      tn: pick("tn", "true_negative", "true_negatives"),
      fp: pick("fp", "false_positive", "false_positives"),
      fn: pick("fn", "false_negative", "false_negatives"),
      tp: pick("tp", "true_positive", "true_positives"),
    };
    if (Object.values(cells).every((n) => typeof n === "number")) return cells as Cells;
  }
  return null;
}

export function ConfusionMatrix({ cells, caption }: { cells: Cells; caption?: string }) {
  return (
    <table className="cm" data-testid="confusion-matrix">
      <caption>{caption ?? "Confusion matrix"}</caption>
      <thead>
        <tr>
          <td />
          <th scope="col">Predicted normal</th>
          <th scope="col">Predicted fracture</th>
        </tr>
      </thead>
      <tbody>
        <tr>
          <th scope="row">Actual normal</th>
          <td className="cm__ok">
            {formatNumber(cells.tn)}
            <small>true negative</small>
          </td>
          <td className="cm__bad">
            {formatNumber(cells.fp)}
            <small>false positive</small>
          </td>
        </tr>
        <tr>
          <th scope="row">Actual fracture</th>
          <td className="cm__bad">
            {formatNumber(cells.fn)}
            <small>missed fracture</small>
          </td>
          <td className="cm__ok">
            {formatNumber(cells.tp)}
            <small>true positive</small>
          </td>
        </tr>
      </tbody>
    </table>
  );
}

const isConfusionKey = (key: string) => /confusion/i.test(key);

/** Renders open-ended model-card JSON: scalars as a definition list, objects nested. */
export function Value({ value, name }: { value: unknown; name?: string }): ReactNode {
  if (name && isConfusionKey(name)) {
    const cells = asConfusion(value);
    if (cells) return <ConfusionMatrix cells={cells} caption={humanise(name)} />;
  }
  if (value === null || value === undefined) return <span className="muted">—</span>;
  if (typeof value === "number") return <span className="mono">{formatNumber(value, name)}</span>;
  if (typeof value === "boolean") return <span>{value ? "yes" : "no"}</span>;
  if (typeof value === "string") return <span>{value}</span>;
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v !== "object" || v === null)) {
      return value.length > 6 && value.every((v) => typeof v === "number") ? (
        <span className="mono">[{value.map((v) => formatNumber(v as number)).join(", ")}]</span>
      ) : (
        <ul className="plain-list">
          {value.map((v, i) => (
            <li key={i}>{typeof v === "number" ? formatNumber(v) : String(v)}</li>
          ))}
        </ul>
      );
    }
    return (
      <ol className="plain-list">
        {value.map((v, i) => (
          <li key={i}>
            <Value value={v} />
          </li>
        ))}
      </ol>
    );
  }
  if (typeof value === "object") {
    return <KeyValues data={value as Record<string, unknown>} />;
  }
  return <span>{String(value)}</span>;
}

export function KeyValues({ data, skip = [] }: { data: Record<string, unknown>; skip?: string[] }) {
  const entries = Object.entries(data).filter(([k, v]) => !skip.includes(k) && v !== undefined);
  // Confusion matrices and nested objects after the scalar rows, so numbers line up on top.
  const scalar = entries.filter(([k, v]) => !isConfusionKey(k) && (typeof v !== "object" || v === null));
  const complex = entries.filter(([k, v]) => isConfusionKey(k) || (typeof v === "object" && v !== null));
  return (
    <div className="kv">
      {scalar.length > 0 && (
        <dl className="kv__list">
          {scalar.map(([k, v]) => (
            <div key={k} className="kv__row">
              <dt>{humanise(k)}</dt>
              <dd>
                <Value value={v} name={k} />
              </dd>
            </div>
          ))}
        </dl>
      )}
      {complex.map(([k, v]) =>
        isConfusionKey(k) && asConfusion(v) ? (
          <Value key={k} value={v} name={k} />
        ) : (
          <div key={k} className="kv__group">
            <h4>{humanise(k)}</h4>
            <Value value={v} name={k} />
          </div>
        ),
      )}
    </div>
  );
}

const SPLIT_ORDER = ["test", "external", "holdout", "validation", "val", "valid"];
const isRecord = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);

/** Metrics keyed by split ({validation: {...}, train: {...}}) get one block per split;
 *  held-out splits first, training-set metrics tucked away (they flatter the model). */
export function MetricsView({ metrics }: { metrics: Record<string, unknown> }) {
  const entries = Object.entries(metrics);
  const bySplit = entries.length > 0 && entries.every(([k, v]) => isRecord(v) && !isConfusionKey(k));
  if (!bySplit) return <KeyValues data={metrics} />;
  const rank = (k: string) => {
    const i = SPLIT_ORDER.indexOf(k.toLowerCase());
    return i === -1 ? (/^train/i.test(k) ? 99 : 50) : i;
  };
  const sorted = [...entries].sort(([a], [b]) => rank(a) - rank(b));
  return (
    <div className="kv">
      {sorted.map(([split, values]) => {
        const v = values as Record<string, unknown>;
        const title = `${humanise(split)} set${typeof v.n === "number" ? ` · ${formatNumber(v.n)} images` : ""}`;
        const body = <KeyValues data={v} skip={["n"]} />;
        return /^train/i.test(split) ? (
          <details key={split} className="model__more">
            <summary>{title} (optimistic: the model has seen these)</summary>
            {body}
          </details>
        ) : (
          <div key={split} className="metrics-split" data-testid={`metrics-${split}`}>
            <h4>{title}</h4>
            {body}
          </div>
        );
      })}
    </div>
  );
}

function asList(value: unknown): string[] {
  if (!value) return [];
  if (Array.isArray(value)) return value.map((v) => (typeof v === "string" ? v : JSON.stringify(v)));
  if (typeof value === "string") return [value];
  if (typeof value === "object")
    return Object.entries(value as Record<string, unknown>).map(
      ([k, v]) => `${humanise(k)}: ${typeof v === "string" ? v : JSON.stringify(v)}`,
    );
  return [String(value)];
}

type Interval = [number, number];
interface HeldOut {
  base_slices?: { fracture?: number; normal?: number };
  model?: Record<string, unknown>;
  intervals_95?: Record<string, Interval>;
  product?: Record<string, unknown>;
  refused?: number;
  /** The folder the split was read from (the card's `test.data`). */
  data?: unknown;
}

function num(v: unknown): string {
  return typeof v === "number" && Number.isFinite(v) ? formatRatio(v) : "—";
}

function withInterval(row: HeldOut, key: string): string {
  const ci = row.intervals_95?.[key];
  const value = num(row.model?.[key]);
  return ci && ci.every((x) => Number.isFinite(x)) ? `${value} [${formatRatio(ci[0])}–${formatRatio(ci[1])}]` : value;
}

/**
 * What the card's `test` split is, in words. The Kaggle archive's val split holds slices of
 * series B10, which is in the training data: its figures are optimistic, not a new patient's.
 */
export function testSplitLabel(test: HeldOut): string {
  return typeof test.data === "string" && /cervical-ct\/val\/?$/.test(test.data)
    ? "Archive val split: series B10, which was in training (not a new patient)"
    : "Test split";
}

/** The whole model card in a dialog that scrolls on its own (in the panel it ran to ~13,000 px). */
function FullCardDialog({ card }: { card: Record<string, unknown> }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [open, setOpen] = useState(false);
  const show = () => {
    setOpen(true);
    openDialog(dialog.current);
  };
  const close = () => {
    closeDialog(dialog.current);
    setOpen(false);
  };
  return (
    <>
      <button type="button" className="btn btn--ghost btn--small" onClick={show} data-testid="full-card-button">
        The full model card
      </button>
      <dialog
        ref={dialog}
        className="card-dialog"
        aria-labelledby="full-card-title"
        data-testid="full-card-dialog"
        onClick={(e) => e.target === dialog.current && close()}
        onClose={() => setOpen(false)}
      >
        <div className="card-dialog__head">
          <h3 id="full-card-title">Model card: every field</h3>
          <button type="button" className="icon-btn" onClick={close} aria-label="Close the model card">
            <CloseIcon />
          </button>
        </div>
        <div className="card-dialog__body" tabIndex={0} data-testid="full-card-body">
          {open && <KeyValues data={card} />}
        </div>
      </dialog>
    </>
  );
}

/** Per held-out CT series (a patient the model never saw), then, apart, the card's test split. */
export function NewPatientTable({ series, test }: { series: Record<string, HeldOut>; test?: HeldOut }) {
  const heldOut: [string, HeldOut][] = Object.entries(series).map(
    ([name, row]) => [`${name} (held out)`, row] as [string, HeldOut],
  );
  const row = ([name, row]: [string, HeldOut]) => (
    <tr key={name}>
      <th scope="row">{name}</th>
      <td className="num">
        {row.base_slices?.fracture ?? "—"}/{row.base_slices?.normal ?? "—"}
      </td>
      <td className="num">{withInterval(row, "auc")}</td>
      <td className="num">
        {withInterval(row, "recall")}
        <br />
        {withInterval(row, "specificity")}
      </td>
      <td className="num">
        {num(row.product?.recall)}
        <br />
        {num(row.product?.specificity)}
      </td>
      <td className="num">{row.refused ?? "—"}</td>
    </tr>
  );
  return (
    <>
    {/* Focusable: the table scrolls sideways in the narrow panel, keyboard users must reach it. */}
    <div className="table-wrap" tabIndex={0} role="region" aria-label="Results on new patients">
      <table className="op-table new-patients" data-testid="new-patient-table">
        <thead>
          <tr>
            <th scope="col">Data</th>
            <th scope="col" className="num">Slices F/N</th>
            <th scope="col" className="num">ROC AUC</th>
            <th scope="col" className="num">Sensitivity · specificity</th>
            <th scope="col" className="num">Product</th>
            <th scope="col" className="num">Refused</th>
          </tr>
        </thead>
        <tbody>{heldOut.map(row)}</tbody>
        {test && (
          <tbody data-testid="test-split-row">
            <tr>
              <th scope="colgroup" colSpan={6} className="new-patients__apart">
                Not a new patient:
              </th>
            </tr>
            {row([testSplitLabel(test), test])}
          </tbody>
        )}
      </table>
    </div>
    <p className="plain-text muted">
      Brackets: 95 % interval over base slices. Product: sensitivity and specificity of what the user is told, the CT
      gate included (a refused fracture counts as missed).
    </p>
    </>
  );
}

interface Props {
  card: ModelCard | null;
  error: string | null;
}

export function ModelPanel({ card, error }: Props) {
  const caveats = card
    ? [...asList(card.caveats), ...asList(card.limitations), ...asList(card.known_limitations)]
    : [];
  const intended = card ? asList(card.intended_use) : [];
  const points = card?.operating_points ?? {};
  const pointKeys = Array.from(new Set(Object.values(points).flatMap((p) => Object.keys(p ?? {}))));
  const simplePointKeys = pointKeys.filter((k) =>
    Object.values(points).every((p) => p?.[k] === undefined || typeof p[k] !== "object"),
  );
  const complexPointKeys = pointKeys.filter((k) => !simplePointKeys.includes(k));
  const placeholder = !!card && /untrained|placeholder/i.test(`${card.version ?? ""} ${card.name ?? ""}`);

  return (
    <aside className="panel model" aria-labelledby="model-title">
      <h2 id="model-title">Model</h2>
      {error && !card && (
        <p className="error error--inline" role="alert">
          Model card unavailable: {error}
        </p>
      )}
      {!card && !error && <p className="muted">Loading model card…</p>}
      {card && (
        <>
          <div className="model__id">
            <p className="model__name" data-testid="model-card-name">
              {card.name ?? "Unnamed model"}
            </p>
            <p className="model__version">
              {card.version ? `Version ${card.version}` : "Unversioned"}
              {card.architecture ? ` · ${card.architecture}` : ""}
            </p>
          </div>
          {placeholder && (
            <p className="notice notice--warn">
              This bundle is marked as an untrained placeholder. Its outputs are not meaningful.
            </p>
          )}

          {isRecord(card.leave_one_series_out) && (
            <section className="model__section" aria-labelledby="new-patient-title">
              <h3 id="new-patient-title">How it does on a new patient</h3>
              <p className="plain-text">
                Each CT series scored by a model trained without it (leave-one-series-out). Only three series exist, so
                these numbers are uncertain; they are the honest ones.
              </p>
              <NewPatientTable
                series={card.leave_one_series_out as Record<string, HeldOut>}
                test={isRecord(card.test) ? (card.test as HeldOut) : undefined}
              />
            </section>
          )}

          <section className="model__section" aria-labelledby="intended-title">
            <h3 id="intended-title">Intended use</h3>
            <p className="notice notice--info">
              <strong>Decision support, not a diagnosis.</strong> Flags axial cervical-spine CT slices that may
              show a fracture so they can be prioritised for review. A qualified clinician must read every study.
            </p>
            {intended.length > 0 && (
              <ul className="plain-list">
                {intended.map((t, i) => (
                  <li key={i}>{t}</li>
                ))}
              </ul>
            )}
          </section>

          <section className="model__section" aria-labelledby="op-title">
            <h3 id="op-title">Operating points</h3>
            {Object.keys(points).length === 0 ? (
              <p className="muted">No operating points in the model card.</p>
            ) : (
              <div className="table-wrap">
                <table className="op-table" data-testid="operating-points">
                  <thead>
                    <tr>
                      <td />
                      {Object.keys(points).map((name) => (
                        <th key={name} scope="col" className="num">
                          {humanise(name)}
                        </th>
                      ))}
                    </tr>
                  </thead>
                  <tbody>
                    {simplePointKeys.map((k) => (
                      <tr key={k}>
                        <th scope="row">{humanise(k)}</th>
                        {Object.entries(points).map(([name, p]) => (
                          <td key={name} className="num">
                            <Value value={p?.[k]} name={k} />
                          </td>
                        ))}
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
            {complexPointKeys.length > 0 &&
              Object.entries(points)
                .filter(([, p]) => complexPointKeys.some((k) => p?.[k] !== undefined))
                .map(([name, p]) => (
                <div key={name} className="kv__group">
                  <h4>{humanise(name)} point</h4>
                  <KeyValues data={Object.fromEntries(complexPointKeys.map((k) => [k, p?.[k]]))} />
                </div>
              ))}
          </section>

          <section className="model__section" aria-labelledby="metrics-title">
            <h3 id="metrics-title">Validation metrics</h3>
            {card.metrics && Object.keys(card.metrics).length > 0 ? (
              <MetricsView metrics={card.metrics} />
            ) : (
              <p className="muted">No validation metrics in the model card yet.</p>
            )}
          </section>

          {isRecord(card.data) && (
            <section className="model__section" aria-labelledby="data-title">
              <h3 id="data-title">Training data</h3>
              {typeof card.data.description === "string" && <p className="plain-text">{card.data.description}</p>}
              <KeyValues data={card.data} skip={["description"]} />
            </section>
          )}

          <section className="model__section" aria-labelledby="caveats-title">
            <h3 id="caveats-title">Known limits</h3>
            {caveats.length > 0 ? (
              <ul className="caveats">
                {caveats.map((c, i) => (
                  <li key={i}>{c}</li>
                ))}
              </ul>
            ) : (
              <p className="muted">No caveats listed in the model card.</p>
            )}
          </section>

          <FullCardDialog card={card as Record<string, unknown>} />
        </>
      )}
    </aside>
  );
}
