/** The user's preferences, kept in this browser's localStorage (nothing leaves the machine). */
const ANALYSE_ON_DROP = "cspine-triage.analyseOnDrop";

function storage(): Storage | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null; // storage blocked (privacy settings)
  }
}

/** Analyse files as soon as they are added; `fallback` when the user never chose. */
export function loadAnalyseOnDrop(fallback: boolean): boolean {
  const value = storage()?.getItem(ANALYSE_ON_DROP);
  return value === "true" ? true : value === "false" ? false : fallback;
}

export function saveAnalyseOnDrop(value: boolean): void {
  try {
    storage()?.setItem(ANALYSE_ON_DROP, String(value));
  } catch {
    // quota or blocked: the choice lasts for this page only
  }
}
