import { useRef, useState, type DragEvent } from "react";
import { ACCEPT } from "../lib/files";

interface Props {
  onFiles(files: File[]): void;
  disabled?: boolean;
  compact?: boolean;
}

/** Drag-and-drop target around a real (keyboard-reachable) file input. */
export function DropZone({ onFiles, disabled, compact }: Props) {
  const [over, setOver] = useState(false);
  const input = useRef<HTMLInputElement>(null);

  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    setOver(false);
    if (disabled) return;
    const files = Array.from(event.dataTransfer?.files ?? []);
    if (files.length) onFiles(files);
  };

  return (
    <div
      className={`drop${over ? " drop--over" : ""}${compact ? " drop--compact" : ""}${disabled ? " drop--disabled" : ""}`}
      onDragOver={(e) => {
        e.preventDefault();
        if (!disabled) setOver(true);
      }}
      onDragLeave={() => setOver(false)}
      onDrop={onDrop}
      // Inactive while an analysis runs: dimmed, and said so (so its dimmed text is not
      // judged as text a user must read).
      role="group"
      aria-disabled={disabled ? true : undefined}
      data-testid="drop-zone"
    >
      <svg className="drop__icon" viewBox="0 0 48 48" aria-hidden="true" focusable="false">
        <path
          d="M24 30V10m0 0-8 8m8-8 8 8M10 30v6a2 2 0 0 0 2 2h24a2 2 0 0 0 2-2v-6"
          fill="none"
          stroke="currentColor"
          strokeWidth="3"
          strokeLinecap="round"
          strokeLinejoin="round"
        />
      </svg>
      <div className="drop__text">
        <label htmlFor="file-input" className="drop__label">
          <span className="drop__primary">
            Drop CT slices here or <span className="link">choose files</span>
          </span>
          <span className="drop__secondary">PNG, JPEG or DICOM · one or many axial slices</span>
        </label>
        <input
          ref={input}
          id="file-input"
          className="visually-hidden-input"
          type="file"
          multiple
          accept={ACCEPT}
          disabled={disabled}
          onChange={(e) => {
            const files = Array.from(e.target.files ?? []);
            if (files.length) onFiles(files);
            e.target.value = "";
          }}
          data-testid="file-input"
        />
      </div>
    </div>
  );
}
