import { describeError } from "../api/client";
import { formatPercent } from "../lib/files";
import { NOT_SCORED, isRefused, resultTone } from "../lib/results";
import type { SliceItem } from "../state";
import { ToneIcon } from "./ResultBadge";

/** One row per file: a worklist view of a multi-file analysis, fractures first. */
export function BatchTable({ items }: { items: SliceItem[] }) {
  const done = items.filter((i) => i.status === "done");
  const positives = done.filter((i) => i.result && resultTone(i.result.result) === "positive").length;
  const refused = done.filter((i) => i.result && isRefused(i.result)).length;
  const errors = items.filter((i) => i.status === "error").length;
  // Possible fractures first, then anything without a normal call (refused, unknown labels).
  const rank = (i: SliceItem) =>
    i.status === "done" && i.result
      ? resultTone(i.result.result) === "positive"
        ? 0
        : resultTone(i.result.result) === "neutral"
          ? 1
          : 2
      : i.status === "error"
        ? 3
        : 4;
  // A refused input's score is not a call: it must not sort as if it were one.
  const score = (i: SliceItem) => (i.result && !isRefused(i.result) ? (i.result.prediction ?? 0) : 0);
  const sorted = [...items].sort(
    (a, b) => rank(a) - rank(b) || score(b) - score(a),
  );

  return (
    <section className="panel batch" aria-labelledby="batch-title">
      <div className="batch__head">
        <h2 id="batch-title">Summary</h2>
        <p className="batch__counts" data-testid="batch-counts">
          <span>{done.length} analysed</span>
          <span className={positives ? "count count--positive" : "count"}>{positives} potentially fracture</span>
          {refused > 0 && (
            <span className="count count--neutral" data-testid="count-refused">
              {refused} not a CT slice
            </span>
          )}
          {errors > 0 && (
            <span className="count count--error">
              <ToneIcon tone="error" className="count__icon" />
              {errors} failed
            </span>
          )}
        </p>
      </div>
      <div className="table-wrap">
        <table className="batch__table" data-testid="batch-table">
          <caption className="visually-hidden">Results for each file, possible fractures first</caption>
          <thead>
            <tr>
              <th scope="col">File</th>
              <th scope="col">Result</th>
              <th scope="col" className="num">
                Fracture probability
              </th>
              <th scope="col" className="num">
                Threshold
              </th>
            </tr>
          </thead>
          <tbody>
            {sorted.map((item) => {
              const tone = item.result ? resultTone(item.result.result) : null;
              const unused = !!item.result && isRefused(item.result);
              return (
                <tr key={item.id}>
                  <th scope="row">
                    <a href={`#${item.id}`} className="batch__file">
                      {item.file.name}
                    </a>
                  </th>
                  <td>
                    {item.status === "done" && item.result ? (
                      <span className={`dot-label dot-label--${tone}`}>
                        <ToneIcon tone={tone ?? "neutral"} className="dot-label__icon" />
                        {item.result.result}
                      </span>
                    ) : item.status === "error" && item.error ? (
                      <span className="dot-label dot-label--error">
                        <ToneIcon tone="error" className="dot-label__icon" />
                        Error: {describeError(item.error.status, item.error.detail).title}
                      </span>
                    ) : item.status === "analysing" ? (
                      <span className="muted">Analysing…</span>
                    ) : (
                      <span className="muted">Not analysed</span>
                    )}
                  </td>
                  <td className={unused ? "num unused" : "num"}>
                    {typeof item.result?.prediction === "number" ? (
                      unused ? (
                        <span className="unused__note">{NOT_SCORED}</span>
                      ) : (
                        formatPercent(item.result.prediction)
                      )
                    ) : (
                      "—"
                    )}
                  </td>
                  <td className="num">
                    {typeof item.result?.threshold === "number" ? formatPercent(item.result.threshold) : "—"}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </section>
  );
}
