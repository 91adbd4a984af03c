/** Open a <dialog> as a modal (jsdom and old browsers without showModal: the open attribute). */
export function openDialog(d: HTMLDialogElement | null): void {
  if (!d) return;
  if (typeof d.showModal === "function") d.showModal();
  else d.setAttribute("open", "");
}

/** Close a <dialog> opened by openDialog. */
export function closeDialog(d: HTMLDialogElement | null): void {
  if (!d) return;
  if (typeof d.close === "function") d.close();
  else d.removeAttribute("open");
}
