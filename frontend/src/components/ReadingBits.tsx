/** Small pieces of the reading workflow shared by the two modes. */

/** The setting "analyse as soon as files are added" (else a click on Analyse). */
export function AnalyseOnDropSetting({
  id,
  value,
  onChange,
}: {
  id: string;
  value: boolean;
  onChange(value: boolean): void;
}) {
  return (
    <div className="setting">
      <input
        id={id}
        type="checkbox"
        checked={value}
        onChange={(e) => onChange(e.target.checked)}
        data-testid={id}
      />
      <label htmlFor={id}>Analyse as soon as files are added</label>
    </div>
  );
}

/** The level-shortcut caveat on a positive call (its words come from lib/results). */
export function LevelCaveat({ text }: { text: string }) {
  return (
    <p className="caveat" data-testid="level-caveat">
      <svg className="caveat__icon" viewBox="0 0 20 20" aria-hidden="true" focusable="false">
        <circle cx="10" cy="10" r="8.25" fill="none" stroke="currentColor" strokeWidth="1.5" />
        <path d="M9.1 8.5h1.8V15H9.1zM10 4.6a1.15 1.15 0 1 1 0 2.3 1.15 1.15 0 0 1 0-2.3Z" fill="currentColor" />
      </svg>
      <span>
        <strong>Caveat: </strong>
        {text}
      </span>
    </p>
  );
}

/** The cross of a close or remove button. */
export function CloseIcon() {
  return (
    <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
      <path d="m5 5 10 10M15 5 5 15" stroke="currentColor" strokeWidth="2" fill="none" />
    </svg>
  );
}
