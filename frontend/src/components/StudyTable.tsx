import { useEffect, useRef } from "react";
import type { StudySlice } from "../api/types";
import { formatPercent } from "../lib/files";
import { NOT_SCORED, RESULT_OUTSIDE_RANGE } from "../lib/results";
import { formatPosition } from "../lib/study";
import { ToneIcon } from "./ResultBadge";
import { RowHeaderButton } from "./RowHeaderButton";

interface Props {
  slices: StudySlice[];
  threshold: number;
  topRank: Map<number, number>;
  selected: number | null;
  onSelect(index: number): void;
  positionUnit?: string | null;
}

/** The chart as a table: every slice, head to foot; a row (or its button) selects the slice. */
export function StudyTable({ slices, threshold, topRank, selected, onSelect, positionUnit }: Props) {
  const wrap = useRef<HTMLDivElement>(null);

  // Keep the selected row in view inside the table's own scroll box (never scroll the page)
  // when the selection comes from the chart or the scrubber.
  useEffect(() => {
    const box = wrap.current;
    if (selected == null || !box) return;
    const row = box.querySelector<HTMLElement>(`tbody [data-index="${selected}"]`);
    const head = box.querySelector<HTMLElement>("thead")?.offsetHeight ?? 0;
    if (!row) return;
    const top = row.offsetTop - head;
    const bottom = row.offsetTop + row.offsetHeight;
    if (top < box.scrollTop) box.scrollTop = top;
    else if (bottom > box.scrollTop + box.clientHeight) box.scrollTop = bottom - box.clientHeight;
  }, [selected]);

  return (
    <div className="table-wrap study-table" ref={wrap}>
      <table className="batch__table" data-testid="study-table">
        <caption className="visually-hidden">
          Fracture probability of each slice, head to foot. Select a slice to view it.
        </caption>
        <thead>
          <tr>
            <th scope="col" className="num">
              #
            </th>
            <th scope="col">Slice</th>
            <th scope="col" className="num">
              {positionUnit === "mm" ? "Position (mm)" : "Position"}
            </th>
            <th scope="col" className="num">
              Probability
            </th>
            <th scope="col">Note</th>
          </tr>
        </thead>
        <tbody>
          {slices.map((s, i) => {
            const ood = s.in_distribution === false;
            const rank = topRank.get(i);
            const isSelected = selected === i;
            return (
              <tr
                key={`${i}-${s.name}`}
                data-index={i}
                className={`study-row${isSelected ? " study-row--selected" : ""}`}
                aria-current={isSelected ? "true" : undefined}
                onClick={() => onSelect(i)}
              >
                <td className="num muted">{i + 1}</td>
                <RowHeaderButton onSelect={() => onSelect(i)} aria-pressed={isSelected} title={s.name}>
                  {s.name}
                </RowHeaderButton>
                <td className="num">{formatPosition(s.position)}</td>
                <td className={ood ? "num unused" : "num"}>
                  {ood ? (
                    <span className="unused__note">{NOT_SCORED}</span>
                  ) : (
                    <span className={s.prediction >= threshold ? "score score--above" : "score"}>
                      {formatPercent(s.prediction)}
                    </span>
                  )}
                </td>
                <td>
                  {ood ? (
                    <span className="dot-label dot-label--neutral">
                      <ToneIcon tone={s.outside_reason ? "outside" : "neutral"} className="dot-label__icon" />
                      {s.outside_reason ? RESULT_OUTSIDE_RANGE : "Not a CT slice"}
                    </span>
                  ) : rank ? (
                    <span className="tag tag--top">Top {rank}</span>
                  ) : s.prediction >= threshold ? (
                    <span className="muted">Above threshold</span>
                  ) : null}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
