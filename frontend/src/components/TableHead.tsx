/** A table's column headers; `num` columns are right-aligned like their figures. */
export function TableHead({ columns }: { columns: { label: string; num?: boolean }[] }) {
  return (
    <thead>
      <tr>
        {columns.map((c) => (
          <th key={c.label} scope="col" className={c.num ? "num" : undefined}>
            {c.label}
          </th>
        ))}
      </tr>
    </thead>
  );
}
