import type { ButtonHTMLAttributes, ReactNode } from "react";

type Props = Omit<ButtonHTMLAttributes<HTMLButtonElement>, "onClick" | "type" | "className"> & {
  onSelect: () => void;
  children: ReactNode;
};

/** The row-header cell of a selectable table row: a button that selects the row from the
 *  keyboard (the row's own click handler serves the mouse anywhere else on it, so the
 *  button's click does not bubble to it a second time). */
export function RowHeaderButton({ onSelect, children, ...rest }: Props) {
  return (
    <th scope="row">
      <button
        type="button"
        className="linklike"
        onClick={(e) => {
          e.stopPropagation();
          onSelect();
        }}
        {...rest}
      >
        {children}
      </button>
    </th>
  );
}
