import { useEffect, useState } from "react";
import { describeError, failureOf, getTopSliceImage, type Failure } from "../api/client";
import type { TopSliceLayer, WorklistEntry } from "../api/types";
import { formatPercent } from "../lib/files";

type Loaded = { url: string } | { failure: Failure } | null;

/** One image of a top slice from the server (an object URL, revoked when it changes), and
 * a way to ask again after a failure (the PACS may have been busy, or still storing it). */
function useTopSliceImage(id: number, rank: number, layer: TopSliceLayer): [Loaded, () => void] {
  const [state, setState] = useState<Loaded>(null);
  const [attempt, setAttempt] = useState(0);
  useEffect(() => {
    let cancelled = false;
    let url: string | null = null;
    setState(null);
    getTopSliceImage(id, rank, layer)
      .then((blob) => {
        if (cancelled) return;
        url = URL.createObjectURL(blob);
        setState({ url });
      })
      .catch((err: unknown) => !cancelled && setState({ failure: failureOf(err) }));
    return () => {
      cancelled = true;
      if (url) URL.revokeObjectURL(url);
    };
  }, [id, rank, layer, attempt]);
  return [state, () => setAttempt((n) => n + 1)];
}

function Figure({
  state,
  retry,
  alt,
  caption,
  testId,
}: {
  state: Loaded;
  retry: () => void;
  alt: string;
  caption: string;
  testId: string;
}) {
  let body;
  if (state == null) {
    body = (
      <p className="muted" aria-busy="true">
        <span className="spinner" aria-hidden="true" /> Loading from the PACS…
      </p>
    );
  } else if ("failure" in state) {
    body = (
      <div data-testid={`${testId}-error`}>
        <p className="muted">{state.failure.detail ?? describeError(state.failure.status).title}</p>
        <button type="button" className="btn btn--ghost btn--small" aria-label={`Try again: ${alt}`} onClick={retry}>
          Try again
        </button>
      </div>
    );
  } else {
    body = <img className="pacs-slices__img" src={state.url} alt={alt} data-testid={testId} />;
  }
  return (
    <figure className="pacs-slices__figure">
      {body}
      <figcaption>{caption}</figcaption>
    </figure>
  );
}

/**
 * A PACS study's top slices as the server reads them from the PACS (DICOMweb): the slice in
 * the model's window beside the heatmap the PACS worker stored for it; one top slice at a time.
 */
export function PacsTopSlices({ entry }: { entry: WorklistEntry }) {
  const [rank, setRank] = useState(1);
  const [slice, retrySlice] = useTopSliceImage(entry.id, rank, "slice");
  const [heatmap, retryHeatmap] = useTopSliceImage(entry.id, rank, "heatmap");
  const top = entry.top_slices[rank - 1];
  if (!top) return null;
  return (
    <section className="pacs-slices" aria-labelledby="pacs-slices-title" data-testid="entry-images">
      <h3 id="pacs-slices-title">Slices from the PACS</h3>
      {entry.top_slices.length > 1 && (
        <div className="pacs-slices__ranks" role="group" aria-label="Top slice shown">
          {entry.top_slices.map((s, i) => (
            <button
              key={s.index}
              type="button"
              className="btn btn--ghost btn--small"
              aria-pressed={i + 1 === rank}
              onClick={() => setRank(i + 1)}
            >
              Top {i + 1} · slice {s.index + 1}
            </button>
          ))}
        </div>
      )}
      <p className="muted" data-testid="entry-images-shown">
        Top {rank}: slice {top.index + 1} ({top.name}), score {formatPercent(top.prediction)}
      </p>
      <div className="pacs-slices__pair">
        <Figure
          state={slice}
          retry={retrySlice}
          alt={`Slice ${top.index + 1}`}
          caption="Slice (the model's window)"
          testId="entry-slice-image"
        />
        <Figure
          state={heatmap}
          retry={retryHeatmap}
          alt={`Heatmap of slice ${top.index + 1}`}
          caption="Heatmap (not for diagnosis)"
          testId="entry-heatmap-image"
        />
      </div>
    </section>
  );
}
