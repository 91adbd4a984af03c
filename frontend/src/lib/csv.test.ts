import { describe, expect, it } from "vitest";
import { studyAnswer } from "../test/mockApi";
import { csvField, slicesCsv, studyCsv, toCsv } from "./csv";

describe("csv", () => {
  it("quotes what needs quoting and defuses spreadsheet formulas", () => {
    expect(csvField('neck "12", axial')).toBe('"neck ""12"", axial"');
    expect(csvField("=HYPERLINK(1)")).toBe("'=HYPERLINK(1)");
    expect(csvField("-1+2")).toBe("'-1+2");
    expect(csvField(-75.7)).toBe("-75.7"); // a number stays a number
    expect(csvField(null)).toBe("");
    expect(csvField(true)).toBe("true");
    expect(toCsv(["a", "b"], [[1, "x\ny"]])).toBe('a,b\r\n1,"x\ny"\r\n');
  });

  it("defuses formulas in every cell, whatever the locale's separator", () => {
    // A ";" splits cells in some locales: the field is quoted, so the formula after it stays text.
    expect(csvField("scan.dcm;=cmd|' /C calc'!A0")).toBe(`"scan.dcm;=cmd|' /C calc'!A0"`);
    expect(csvField("\uFF1DHYPERLINK(1)")).toBe("'\uFF1DHYPERLINK(1)"); // full-width =
    expect(csvField("\uFF0B1")).toBe("'\uFF0B1");
    expect(csvField(" =1+2")).toBe("' =1+2"); // leading space: escaped
    expect(csvField("\t=1+2")).toBe(`"'\t=1+2"`);
    expect(csvField("@SUM(A1)")).toBe("'@SUM(A1)");
    expect(csvField("+1")).toBe("'+1");
    expect(csvField("neck (3).png")).toBe("neck (3).png"); // plain text unchanged
    const line = toCsv(["name", "result"], [["x;=1+1", "\uFF1D2"]]).split("\r\n")[1];
    expect(line).toBe(`"x;=1+1",'\uFF1D2`);
  });

  it("writes every slice of a study, head to foot, with how the study used it", () => {
    const study = studyAnswer([0.1, 0.2, 0.9, 0.8, 0.95], { ood: [4] });
    const lines = studyCsv(study).trim().split("\r\n");
    expect(lines[0]).toBe(
      "slice,name,position,position_unit,fracture_probability,in_distribution,at_or_above_threshold,top_rank,study_threshold,operating_point",
    );
    expect(lines).toHaveLength(6);
    expect(lines[3]).toBe("3,neck (3).png,3,slice number,0.9,true,true,1,0.5,sensitive");
    expect(lines[2]).toBe("2,neck (2).png,2,slice number,0.2,true,false,,0.5,sensitive");
    expect(lines[5]).toBe("5,neck (5).png,5,slice number,,false,,,0.5,sensitive"); // not scored
    expect(studyCsv({ ...study, position_unit: "mm" })).toContain(",mm,");
  });

  it("writes single-slice results, the refused score left out", () => {
    const text = slicesCsv([
      { name: "a.png", result: "Normal", prediction: 0.1, threshold: 0.3, operatingPoint: "sensitive", inDistribution: true },
      { name: "cat.png", result: "Not a CT slice", prediction: 0.9, threshold: 0.3, operatingPoint: "sensitive", inDistribution: false },
      { name: "bad.txt", error: "Not an image" },
    ]);
    const lines = text.trim().split("\r\n");
    expect(lines[1]).toBe("a.png,Normal,0.1,0.3,sensitive,true,");
    expect(lines[2]).toBe("cat.png,Not a CT slice,,0.3,sensitive,false,");
    expect(lines[3]).toBe("bad.txt,,,,,,Not an image");
  });
});
