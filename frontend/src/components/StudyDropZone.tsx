import { useState, type DragEvent } from "react";
import { ACCEPT } from "../lib/files";
import { filesFromDrop } from "../lib/study";

interface Props {
  onFiles(files: File[], folder?: string): void;
  disabled?: boolean;
  compact?: boolean;
}

// Not in React's types: the folder picker. Chromium, Firefox and Safari all support it.
const FOLDER_PICKER = { webkitdirectory: "", directory: "" } as Record<string, string>;

/** Drop target for one series: a folder (walked recursively), a .zip, or many files. */
export function StudyDropZone({ onFiles, disabled, compact }: Props) {
  const [over, setOver] = useState(false);

  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    setOver(false);
    if (disabled) return;
    // The drop's items must be read before the handler returns: filesFromDrop does so first.
    void filesFromDrop(event.dataTransfer).then(({ files, folder }) => files.length && onFiles(files, folder));
  };

  const picked = (input: HTMLInputElement) => {
    const files = Array.from(input.files ?? []);
    if (files.length) onFiles(files);
    input.value = "";
  };

  return (
    <div
      className={`drop drop--study${over ? " drop--over" : ""}${compact ? " drop--compact" : ""}${
        disabled ? " drop--disabled" : ""
      }`}
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
      data-testid="study-drop-zone"
    >
      <svg className="drop__icon" viewBox="0 0 48 48" aria-hidden="true" focusable="false">
        <path
          d="M6 14a3 3 0 0 1 3-3h9l4 4h17a3 3 0 0 1 3 3v17a3 3 0 0 1-3 3H9a3 3 0 0 1-3-3V14Z"
          fill="none"
          stroke="currentColor"
          strokeWidth="3"
          strokeLinejoin="round"
        />
        <path d="M24 33V21m0 0-5 5m5-5 5 5" fill="none" stroke="currentColor" strokeWidth="3" strokeLinecap="round" />
      </svg>
      <div className="drop__text">
        <p className="drop__primary">Drop a series folder or a .zip here</p>
        <p className="drop__secondary">DICOM files, or PNG/JPEG slices with the slice number in each name</p>
      </div>
      <div className="drop__buttons">
        <input
          id="study-folder-input"
          className="visually-hidden-input"
          type="file"
          multiple
          disabled={disabled}
          onChange={(e) => picked(e.target)}
          data-testid="study-folder-input"
          {...FOLDER_PICKER}
        />
        <label htmlFor="study-folder-input" className="btn btn--ghost btn--small">
          Select a folder
        </label>
        <input
          id="study-files-input"
          className="visually-hidden-input"
          type="file"
          multiple
          accept={`.zip,application/zip,${ACCEPT}`}
          disabled={disabled}
          onChange={(e) => picked(e.target)}
          data-testid="study-files-input"
        />
        <label htmlFor="study-files-input" className="btn btn--ghost btn--small">
          Select files or a .zip
        </label>
      </div>
    </div>
  );
}
