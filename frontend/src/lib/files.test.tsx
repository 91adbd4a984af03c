import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";
import { DropZone } from "../components/DropZone";
import { StudyDropZone } from "../components/StudyDropZone";
import { INPUT_FORMATS } from "../generated/formats";
import { ACCEPT, previewKind } from "./files";

const file = (name: string, type = "") => new File([new Uint8Array(16)], name, { type });

describe("accepted formats (generated from the server's table)", () => {
  it("accepts every extension and MIME type the server decodes, BMP, TIFF and GIF included", () => {
    const accept = ACCEPT.split(",");
    for (const format of INPUT_FORMATS) {
      for (const item of [...format.extensions, ...format.mimeTypes]) expect(accept).toContain(item);
    }
    for (const item of [".bmp", ".tif", ".tiff", ".gif", ".dcm", ".png", ".jpg"]) expect(accept).toContain(item);
  });

  it("lets the slice picker take a TIFF, a BMP and a GIF, and still refuse a text file", async () => {
    const onFiles = vi.fn();
    render(<DropZone onFiles={onFiles} />);
    const user = userEvent.setup({ applyAccept: true });
    const picked = [file("a.tif", "image/tiff"), file("b.bmp", "image/bmp"), file("c.gif", "image/gif")];
    await user.upload(screen.getByLabelText(/choose files/i), [...picked, file("notes.txt", "text/plain")]);
    expect(onFiles).toHaveBeenCalledTimes(1);
    expect(onFiles.mock.calls[0]?.[0].map((f: File) => f.name)).toEqual(["a.tif", "b.bmp", "c.gif"]);
  });

  it("lets the study picker take a zip and every slice format", () => {
    render(<StudyDropZone onFiles={vi.fn()} />);
    const input = screen.getByLabelText(/select files or a \.zip/i);
    expect(input.getAttribute("accept")).toBe(`.zip,application/zip,${ACCEPT}`);
  });
});

describe("previewKind", () => {
  it("knows DICOM by the table's extensions and MIME type, whatever the case", () => {
    expect(previewKind(file("IM0001.DCM"))).toBe("dicom");
    expect(previewKind(file("slice.dicom"))).toBe("dicom");
    expect(previewKind(file("slice.dic"))).toBe("dicom");
    expect(previewKind(file("x.bin", "application/dicom"))).toBe("dicom");
    expect(previewKind(file("IM0001"))).toBe("dicom"); // no extension: a PACS export
    expect(previewKind(file("a.png", "image/png"))).toBe("image");
    expect(previewKind(file("a.tif", "image/tiff"))).toBe("other");
  });
});
