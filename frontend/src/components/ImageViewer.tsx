import { useCallback, useEffect, useRef, useState, type KeyboardEvent, type PointerEvent, type ReactNode, type Ref } from "react";
import { clampPan, zoomStep } from "../lib/viewer";

export interface ViewerImage {
  src: string;
  alt: string;
  testId?: string;
}

interface Props {
  /** The slice itself (browser image, or the server's DICOM preview). */
  base?: ViewerImage | null;
  /** The Grad-CAM heatmap (the slice with the heatmap blended in), laid over the base. */
  overlay?: ViewerImage | null;
  /** Overlay opacity to start with, 0–1. */
  initialOpacity?: number;
  /** What the stage is, for assistive technology (and the keys it takes). */
  label: string;
  /** Shown when there is no image at all. */
  placeholder?: ReactNode;
  busy?: boolean;
  stageRef?: Ref<HTMLDivElement>;
  /** Extra controls at the end of the toolbar. */
  tools?: ReactNode;
  className?: string;
  testId?: string;
}

const OVERLAY_LEGEND = "Heatmap: where the model looked — not a fracture outline";

/**
 * A slice as large as the space allows: zoom (buttons, +/−/0, Ctrl or ⌘ + wheel), pan (drag
 * when zoomed), the heatmap as an overlay of adjustable opacity with a legend saying what it
 * is, and a full-screen toggle (the Fullscreen API, else a fixed full-window layout).
 */
export function ImageViewer({
  base,
  overlay,
  initialOpacity = 0.6,
  label,
  placeholder,
  busy,
  stageRef,
  tools,
  className,
  testId = "image-viewer",
}: Props) {
  const root = useRef<HTMLDivElement>(null);
  const stage = useRef<HTMLDivElement | null>(null);
  const [zoom, setZoom] = useState(1);
  const [pan, setPan] = useState({ x: 0, y: 0 });
  const [opacity, setOpacity] = useState(initialOpacity);
  const [full, setFull] = useState(false);
  const drag = useRef<{ id: number; x: number; y: number; pan: { x: number; y: number } } | null>(null);
  const onlyOverlay = !!overlay && !base;
  const shownOpacity = onlyOverlay ? 1 : opacity;

  useEffect(() => setOpacity(initialOpacity), [initialOpacity]);

  const size = () => {
    const box = stage.current?.getBoundingClientRect();
    return { w: box?.width ?? 0, h: box?.height ?? 0 };
  };
  const zoomBy = useCallback((direction: 1 | -1) => {
    setZoom((z) => {
      const next = zoomStep(z, direction);
      const { w, h } = size();
      setPan((p) => (next === 1 ? { x: 0, y: 0 } : clampPan(p, next, w, h)));
      return next;
    });
  }, []);
  const reset = () => {
    setZoom(1);
    setPan({ x: 0, y: 0 });
  };

  // Ctrl/⌘ + wheel zooms (what a trackpad pinch sends too). A native listener: React's wheel
  // listeners are passive and could not keep the page from zooming.
  useEffect(() => {
    const el = stage.current;
    if (!el) return;
    const onWheel = (event: WheelEvent) => {
      if (!event.ctrlKey && !event.metaKey) return;
      event.preventDefault();
      if (event.deltaY) zoomBy(event.deltaY < 0 ? 1 : -1);
    };
    el.addEventListener("wheel", onWheel, { passive: false });
    return () => el.removeEventListener("wheel", onWheel);
  }, [zoomBy]);

  // Full screen: follow the browser's state (Escape leaves it without our button).
  useEffect(() => {
    const sync = () => setFull(document.fullscreenElement === root.current);
    document.addEventListener("fullscreenchange", sync);
    return () => document.removeEventListener("fullscreenchange", sync);
  }, []);
  const toggleFull = async () => {
    const el = root.current;
    if (!el) return;
    if (full) {
      if (document.fullscreenElement && typeof document.exitFullscreen === "function") await document.exitFullscreen().catch(() => {});
      setFull(false);
      return;
    }
    if (typeof el.requestFullscreen === "function") {
      try {
        await el.requestFullscreen();
      } catch {
        // refused (no user gesture, an iframe): the fixed full-window layout instead
      }
    }
    setFull(true);
  };

  const onKey = (event: KeyboardEvent<HTMLDivElement>) => {
    if (event.ctrlKey || event.altKey || event.metaKey) return;
    if (event.key === "+" || event.key === "=") zoomBy(1);
    else if (event.key === "-" || event.key === "_") zoomBy(-1);
    else if (event.key === "0") reset();
    else if (event.key === "Escape" && full && !document.fullscreenElement) setFull(false);
    else return;
    event.preventDefault();
    event.stopPropagation();
  };

  const onPointerDown = (event: PointerEvent<HTMLDivElement>) => {
    if (zoom <= 1 || event.button !== 0) return;
    drag.current = { id: event.pointerId, x: event.clientX, y: event.clientY, pan };
    event.currentTarget.setPointerCapture?.(event.pointerId);
  };
  const onPointerMove = (event: PointerEvent<HTMLDivElement>) => {
    const d = drag.current;
    if (!d || d.id !== event.pointerId) return;
    const { w, h } = size();
    setPan(clampPan({ x: d.pan.x + event.clientX - d.x, y: d.pan.y + event.clientY - d.y }, zoom, w, h));
  };
  const endDrag = () => {
    drag.current = null;
  };

  const setStage = (el: HTMLDivElement | null) => {
    stage.current = el;
    if (typeof stageRef === "function") stageRef(el);
    else if (stageRef) (stageRef as { current: HTMLDivElement | null }).current = el;
  };
  const hasImage = !!(base || overlay);

  return (
    <div
      ref={root}
      className={`iv${full ? " iv--full" : ""}${className ? ` ${className}` : ""}`}
      data-testid={testId}
    >
      <div
        ref={setStage}
        className={`iv__stage${zoom > 1 ? " iv__stage--zoomed" : ""}`}
        role="group"
        aria-label={label}
        aria-roledescription="image viewer"
        tabIndex={0}
        onKeyDown={onKey}
        onPointerDown={onPointerDown}
        onPointerMove={onPointerMove}
        onPointerUp={endDrag}
        onPointerCancel={endDrag}
        data-testid={`${testId}-stage`}
      >
        {hasImage ? (
          <div className="iv__canvas" style={{ transform: `translate(${pan.x}px, ${pan.y}px) scale(${zoom})` }}>
            {base && <img src={base.src} alt={base.alt} className="iv__img" data-testid={base.testId} draggable={false} />}
            {overlay && (
              <img
                src={overlay.src}
                alt={overlay.alt}
                className={`iv__img${base ? " iv__img--overlay" : ""}`}
                style={{ opacity: shownOpacity }}
                data-testid={overlay.testId}
                draggable={false}
              />
            )}
          </div>
        ) : (
          placeholder
        )}
        {busy && (
          <div className="thumb__busy" aria-hidden="true">
            <span className="spinner" />
          </div>
        )}
      </div>

      <div className="iv__bar">
        <div className="iv__tools" role="toolbar" aria-label="Image tools">
          <button type="button" className="iv__btn" onClick={() => zoomBy(-1)} disabled={!hasImage || zoom <= 1} aria-label="Zoom out">
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="M4 10h12" stroke="currentColor" strokeWidth="2" />
            </svg>
          </button>
          <span className="iv__zoom" aria-live="polite" data-testid={`${testId}-zoom`}>
            {Math.round(zoom * 100)}%
          </span>
          <button type="button" className="iv__btn" onClick={() => zoomBy(1)} disabled={!hasImage || zoom >= 8} aria-label="Zoom in">
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="M4 10h12M10 4v12" stroke="currentColor" strokeWidth="2" />
            </svg>
          </button>
          <button type="button" className="iv__btn iv__btn--text" onClick={reset} disabled={zoom === 1}>
            Fit
          </button>
          <button
            type="button"
            className="iv__btn"
            onClick={() => void toggleFull()}
            aria-pressed={full}
            aria-label="Full screen"
            disabled={!hasImage}
            data-testid={`${testId}-fullscreen`}
          >
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              {full ? (
                <path d="M8 3v5H3m9-5v5h5M8 17v-5H3m9 5v-5h5" fill="none" stroke="currentColor" strokeWidth="2" />
              ) : (
                <path d="M3 8V3h5m4 0h5v5M3 12v5h5m4 0h5v-5" fill="none" stroke="currentColor" strokeWidth="2" />
              )}
            </svg>
          </button>
          {tools}
        </div>
        {base && overlay && (
          <label className="iv__opacity">
            <span>Heatmap opacity</span>
            <input
              type="range"
              min={0}
              max={100}
              step={5}
              value={Math.round(opacity * 100)}
              onChange={(e) => setOpacity(Number(e.target.value) / 100)}
              aria-valuetext={`${Math.round(opacity * 100)}%`}
              data-testid={`${testId}-opacity`}
            />
          </label>
        )}
      </div>
      {overlay && (
        <p className="iv__legend" data-testid={`${testId}-legend`}>
          <span className="legend__ramp" aria-hidden="true" />
          <span className="visually-hidden">Colour scale from low to high. </span>
          {OVERLAY_LEGEND}
        </p>
      )}
    </div>
  );
}
