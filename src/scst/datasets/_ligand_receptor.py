"""Ligand–receptor pair lists: GCNG/Ramilowski 2015, Giotto's mouse list and LIANA's consensus resources."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

import pandas as pd

from .._logging import logg
from ._fetch import fetch

__all__ = ["ligand_receptor", "as_lr_table", "complex_subunits", "lr_pairs_in_genes", "LR_RESOURCES"]

_DS = "ligand_receptor"
#: Names accepted by :func:`ligand_receptor`.
LR_RESOURCES = ("gcng", "ramilowski", "ramilowski_curated", "giotto", "liana")
#: liana's separator between the subunits of a complex (``ITGA1_ITGB1``).
COMPLEX_SEP = "_"


def complex_subunits(entity: str) -> list[str]:
    """Subunits of a ligand/receptor entity: ``"ITGA1_ITGB1"`` → ``["ITGA1", "ITGB1"]``, ``"EGFR"`` → ``["EGFR"]``.

    Complexes follow liana's convention: one entity whose subunit symbols are joined by ``"_"``.

    Parameters
    ----------
    entity
        A ligand or receptor entity name (gene symbol or ``"_"``-joined complex).

    Returns
    -------
    The subunit symbols, in order; empty parts are dropped.
    """
    return [s for s in str(entity).split(COMPLEX_SEP) if s]


def _to_case(symbol: str, organism: str) -> str:
    # Human symbols are upper case; mouse symbols capitalised (Title case) per subunit.
    if organism == "human":
        return symbol.upper()
    return COMPLEX_SEP.join(s[:1].upper() + s[1:].lower() for s in complex_subunits(symbol))


def _liana(resource: str, path: str | os.PathLike | None) -> pd.DataFrame:
    try:
        f = fetch(_DS, f"liana_{resource}.csv", path)
    except FileNotFoundError as err:
        try:
            from liana.resource import select_resource
        except ImportError:
            raise FileNotFoundError(
                f"liana_{resource}.csv is not available locally (set SCST_DATA_DIR or pass `path`) and liana is not "
                "installed to provide it (`pip install liana`)."
            ) from err
        logg.info(f"liana_{resource}.csv not local; using liana.resource.select_resource({resource!r}).")
        res = select_resource(resource)
        return pd.DataFrame({"ligand": res["ligand"].astype(str), "receptor": res["receptor"].astype(str)})
    df = pd.read_csv(f)
    return pd.DataFrame(
        {"ligand": df["source_genesymbol"].astype(str), "receptor": df["target_genesymbol"].astype(str)}
    )


def _liana_resource_names() -> list[str]:
    try:
        from liana.resource import show_resources
    except ImportError:
        return []
    return list(show_resources())


def ligand_receptor(
    name: Literal["gcng", "ramilowski", "ramilowski_curated", "giotto", "liana"] | str = "gcng",
    organism: Literal["human", "mouse"] = "human",
    path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """A ligand–receptor pair list as a DataFrame with columns ``ligand`` and ``receptor``.

    Parameters
    ----------
    name
        - ``"gcng"`` / ``"ramilowski"``: the list GCNG used, the full Ramilowski et al. 2015 table (2,557 pairs,
          human symbols, including the 135 pairs Ramilowski marked EXCLUDED) up to case: GCNG's file is lower case
          and is re-cased by ``organism``, so the six HGNC ``orf`` symbols read upper case (``C1ORF112``, not
          ``C1orf112``). :func:`lr_pairs_in_genes` matches case-insensitively by default and returns the data's
          spelling; compare exactly only after it;
        - ``"ramilowski_curated"``: Ramilowski 2015 without the EXCLUDED rows (2,422 pairs), with its
          ``evidence`` column (``literature supported`` / ``putative``);
        - ``"giotto"``: Giotto's mouse list (1,067 pairs, a subset of Ramilowski);
        - ``"liana"``: LIANA's OmniPath consensus (``consensus`` for human, 4,620 pairs;
          ``mouseconsensus`` for mouse, 3,989 pairs). Complexes are kept as one entity with ``_``-joined
          subunits (e.g. ``ITGA1_ITGB1``); see :func:`complex_subunits` and :func:`lr_pairs_in_genes`;
        - any other resource of ``liana.resource.show_resources()`` (``"cellphonedb"``, ``"cellchatdb"``,
          ``"consensus"``...), read with ``liana.resource.select_resource`` (liana's symbols, not re-cased).
    organism
        Symbol case of the output: ``"human"`` upper case (``orf`` symbols included), ``"mouse"`` capitalised
        (``Col4a1``). Lists published for that organism (Giotto and liana mouse lists for mouse; Ramilowski's
        approved symbols for ``"ramilowski_curated"`` in human) keep their own symbols; the others are re-cased
        only, not orthology-mapped (as GCNG did), so human-only genes stay in.
    path
        Folder laid out like ``shared/data/ligand_receptor``; else ``$SCST_DATA_DIR/ligand_receptor``, else a
        download with a known hash (the liana files are local only; without them ``liana`` is used when
        installed).

    Returns
    -------
    DataFrame with ``ligand``, ``receptor`` (and ``evidence`` for ``"ramilowski_curated"``), one row per unique
    pair, in the source order; ``df.attrs["resource"]`` and ``df.attrs["organism"]`` record the request.
    """
    if organism not in ("human", "mouse"):
        raise ValueError(f"organism: expected 'human' or 'mouse', got {organism!r}.")
    if name not in LR_RESOURCES:
        liana_names = _liana_resource_names()
        if name not in liana_names:
            raise ValueError(
                f"name: unknown ligand–receptor list {name!r}; expected one of {list(LR_RESOURCES)}"
                + (f" or a liana resource {liana_names}." if liana_names else " (install liana for its resources).")
            )
        from liana.resource import select_resource

        res = select_resource(name)
        df = pd.DataFrame({"ligand": res["ligand"].astype(str), "receptor": res["receptor"].astype(str)})
        df = df.drop_duplicates(["ligand", "receptor"]).reset_index(drop=True)
        df.attrs.update(resource=name, organism=organism)
        return df
    native = False
    if name in ("gcng", "ramilowski"):
        df = pd.read_csv(
            fetch(_DS, "gcng_ligand_receptor_pairs2.txt", path), sep="\t", header=None, names=["ligand", "receptor"]
        )
    elif name == "ramilowski_curated":
        raw = pd.read_csv(fetch(_DS, "ramilowski2015_PairsLigRec_human.txt", path), sep="\t", dtype=str)
        raw = raw[~raw["Pair.Evidence"].str.startswith("EXCLUDED")]
        df = pd.DataFrame(
            {
                "ligand": raw["Ligand.ApprovedSymbol"].to_numpy(),
                "receptor": raw["Receptor.ApprovedSymbol"].to_numpy(),
                "evidence": raw["Pair.Evidence"].to_numpy(),
            }
        )
        native = organism == "human"
    elif name == "giotto":
        df = pd.read_csv(fetch(_DS, "giotto_mouse_ligand_receptors.txt", path), sep="\t")
        df = df.rename(columns={"mouseLigand": "ligand", "mouseReceptor": "receptor"})[["ligand", "receptor"]]
        native = organism == "mouse"
    else:
        df = _liana("consensus" if organism == "human" else "mouseconsensus", path)
        native = True
    for col in ("ligand", "receptor"):
        df[col] = df[col].astype(str).str.strip()
        if not native:
            df[col] = [_to_case(s, organism) for s in df[col]]
    df = df.drop_duplicates(["ligand", "receptor"]).reset_index(drop=True)
    df.attrs.update(resource=name, organism=organism)
    return df


def _check_lr_table(pairs: pd.DataFrame, arg: str = "pairs") -> None:
    if not isinstance(pairs, pd.DataFrame):
        raise TypeError(
            f"`{arg}` must be a DataFrame with columns 'ligand' and 'receptor', got {type(pairs).__name__}."
        )
    missing = [c for c in ("ligand", "receptor") if c not in pairs.columns]
    if missing:
        raise ValueError(
            f"`{arg}` lacks required column(s) {missing}; expected 'ligand' and 'receptor' "
            f"(found {list(pairs.columns)})."
        )


def as_lr_table(resource: pd.DataFrame | str | Iterable[tuple[str, str]], organism: str = "human") -> pd.DataFrame:
    """A ligand–receptor resource in liana's format: a DataFrame with ``ligand`` and ``receptor`` columns.

    Parameters
    ----------
    resource
        - a DataFrame in liana's format (``ligand``, ``receptor``; complexes ``_``-joined; other columns kept), or
          OmniPath's (``source_genesymbol``, ``target_genesymbol``, as in liana's ``omni_resource.csv``);
        - a list of ``(ligand, receptor)`` tuples (liana's ``interactions``);
        - a resource name for :func:`ligand_receptor` (scst's lists or any liana resource).
    organism
        For a resource name.

    Returns
    -------
    DataFrame with ``ligand`` and ``receptor`` (strings) first.
    """
    if isinstance(resource, str):
        return ligand_receptor(resource, organism=organism)
    if isinstance(resource, pd.DataFrame):
        df = resource
        if {"source_genesymbol", "target_genesymbol"} <= set(df.columns) and "ligand" not in df.columns:
            df = df.rename(columns={"source_genesymbol": "ligand", "target_genesymbol": "receptor"})
        _check_lr_table(df, "resource")
    elif isinstance(resource, Iterable):
        rows = list(resource)
        if not rows or not all(isinstance(r, tuple | list) and len(r) == 2 for r in rows):
            raise ValueError(
                f"resource: a list must hold (ligand, receptor) tuples (liana's `interactions`); got {rows[:3]!r}."
            )
        df = pd.DataFrame(rows, columns=["ligand", "receptor"])
    else:
        raise TypeError(
            "resource: expected a DataFrame with 'ligand'/'receptor' columns (liana's format), a list of "
            f"(ligand, receptor) tuples, or a resource name; got {type(resource).__name__}."
        )
    bad = df["ligand"].isna() | df["receptor"].isna()
    if bad.all():
        raise ValueError("resource: every row lacks a ligand or a receptor.")
    df = df[~bad].copy()
    df["ligand"] = df["ligand"].astype(str).str.strip()
    df["receptor"] = df["receptor"].astype(str).str.strip()
    return df[["ligand", "receptor", *[c for c in df.columns if c not in ("ligand", "receptor")]]]


def lr_pairs_in_genes(
    pairs: pd.DataFrame,
    genes: Iterable[str],
    *,
    case_sensitive: bool = False,
    complexes: Literal["all", "drop"] = "all",
) -> pd.DataFrame:
    """Pairs whose ligand and receptor are measured, renamed to the data's symbols.

    A complex (``A_B``) counts as present only when every subunit is present (``complexes="all"``, liana's
    rule) or is dropped (``"drop"``). Matching is case-insensitive by default, as GCNG matched its human list
    to mouse genes; a symbol spelled exactly as a gene is that gene, and one matching several case variants but
    none exactly (``Cd74`` with ``CD74`` and ``cd74`` measured) takes the first of them in sorted order, so the
    order of ``genes`` does not change the result.

    Parameters
    ----------
    pairs
        Table with ``ligand`` and ``receptor`` columns (e.g. from :func:`ligand_receptor`); other columns are kept.
    genes
        The measured gene symbols (``adata.var_names``).
    case_sensitive
        Match symbols exactly.
    complexes
        ``"all"`` or ``"drop"``, see above.

    Returns
    -------
    The present pairs (index reset), ``ligand``/``receptor`` spelled as in ``genes`` (complex subunits re-joined
    with ``_``), duplicates after renaming removed. ``attrs["missing_subunits"]``: complex → its absent subunits,
    for complexes with some but not all subunits measured (their pairs are dropped).
    """
    _check_lr_table(pairs)
    if complexes not in ("all", "drop"):
        raise ValueError(f"complexes: expected 'all' or 'drop', got {complexes!r}.")
    genes = [str(g) for g in genes]
    exact = set(genes)
    lookup: dict[str, str] = {}
    for g in sorted(exact):  # case variants (``CD74``, ``Cd74``): not the one that comes first in var_names
        lookup.setdefault(g if case_sensitive else g.lower(), g)

    partial: dict[str, list[str]] = {}

    def _map(entity: str) -> str | None:
        subs = complex_subunits(entity)
        if not subs or (len(subs) > 1 and complexes == "drop"):
            return None
        hit = [s if s in exact else lookup.get(s if case_sensitive else s.lower()) for s in subs]
        if len(subs) > 1 and any(h is None for h in hit) and any(h is not None for h in hit):
            partial[entity] = [s for s, h in zip(subs, hit) if h is None]
        return None if any(h is None for h in hit) else COMPLEX_SEP.join(hit)

    out = pairs.copy()
    out["ligand"] = [_map(s) for s in pairs["ligand"].astype(str)]
    out["receptor"] = [_map(s) for s in pairs["receptor"].astype(str)]
    out = out.dropna(subset=["ligand", "receptor"])
    out = out.drop_duplicates(["ligand", "receptor"]).reset_index(drop=True)
    out.attrs.update(pairs.attrs)
    out.attrs["missing_subunits"] = partial
    return out
