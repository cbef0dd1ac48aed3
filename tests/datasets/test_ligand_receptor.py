"""scst.datasets.ligand_receptor and the presence helper, checked against the counts in the data READMEs."""

from __future__ import annotations

import pandas as pd
import pytest

from scst.datasets._ligand_receptor import complex_subunits, ligand_receptor, lr_pairs_in_genes


def test_gcng_list_case_per_organism():
    human = ligand_receptor("gcng", "human")
    mouse = ligand_receptor("ramilowski", "mouse")
    assert len(human) == len(mouse) == 2557
    assert human.iloc[0].tolist() == ["A2M", "LRP1"] and mouse.iloc[0].tolist() == ["A2m", "Lrp1"]
    assert human.attrs == {"resource": "gcng", "organism": "human"}
    assert human["ligand"].nunique() == 708 and human["receptor"].nunique() == 691  # README: 708 / 691


def test_curated_drops_excluded_rows():
    cur = ligand_receptor("ramilowski_curated")
    assert len(cur) == 2422
    assert set(cur["evidence"]) == {"literature supported", "putative"}
    assert (cur["evidence"] == "putative").sum() == 528


def test_giotto_and_liana():
    giotto = ligand_receptor("giotto", "mouse")
    assert len(giotto) == 1067 and giotto.iloc[0].tolist() == ["A2m", "Lrp1"]
    assert ligand_receptor("giotto", "human").iloc[0].tolist() == ["A2M", "LRP1"]
    hum, mou = ligand_receptor("liana", "human"), ligand_receptor("liana", "mouse")
    assert len(hum) == 4620 and len(mou) == 3989
    # README: complexes on the source / target side: 21 / 1,091 (human), 19 / 1,024 (mouse).
    assert hum["ligand"].str.contains("_").sum() == 21 and hum["receptor"].str.contains("_").sum() == 1091
    assert mou["ligand"].str.contains("_").sum() == 19 and mou["receptor"].str.contains("_").sum() == 1024
    assert mou.iloc[0].tolist() == ["Dll1", "Notch1"]  # mouse symbols kept as published


def test_presence_on_seqfish_genes_matches_readme():
    from scst.datasets._seqfish import seqfish_cortex

    genes = seqfish_cortex().var_names
    assert len(lr_pairs_in_genes(ligand_receptor("gcng", "human"), genes)) == 68  # case-insensitive
    assert len(lr_pairs_in_genes(ligand_receptor("gcng", "human"), genes, case_sensitive=True)) == 0
    assert len(lr_pairs_in_genes(ligand_receptor("giotto", "mouse"), genes)) == 25
    mou = ligand_receptor("liana", "mouse")
    assert len(lr_pairs_in_genes(mou, genes, complexes="drop")) == 65
    present = lr_pairs_in_genes(mou, genes)  # complexes count when all subunits are present
    assert len(present) == 83
    assert set(present.loc[present["receptor"].str.contains("_"), "receptor"].map(complex_subunits).sum()) <= set(genes)


def test_complex_helpers():
    assert complex_subunits("ITGA1_ITGB1") == ["ITGA1", "ITGB1"] and complex_subunits("EGFR") == ["EGFR"]
    pairs = pd.DataFrame({"ligand": ["col1a1", "COL1A1", "VEGFA"], "receptor": ["itga1_itgb1", "ITGA2", "KDR"],
                          "note": ["a", "b", "c"]})  # fmt: skip
    out = lr_pairs_in_genes(pairs, ["COL1A1", "ITGA1", "ITGB1", "VEGFA"])
    assert out[["ligand", "receptor"]].values.tolist() == [["COL1A1", "ITGA1_ITGB1"]]
    assert out["note"].tolist() == ["a"]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown ligand"):
        ligand_receptor("not_a_resource")
    with pytest.raises(ValueError, match="organism"):
        ligand_receptor("gcng", organism="zebrafish")
    with pytest.raises(ValueError, match="lacks required column"):
        lr_pairs_in_genes(pd.DataFrame({"source": ["A"], "target": ["B"]}), ["A", "B"])


def _no_liana(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_liana(name, *args, **kwargs):
        if name.startswith("liana"):
            raise ImportError("no liana")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_liana)


def test_liana_files_absent_without_liana(tmp_path, monkeypatch):
    _no_liana(monkeypatch)
    with pytest.raises(FileNotFoundError, match="liana is not installed"):
        ligand_receptor("liana", path=tmp_path)
    # other liana resources: the error says to install liana, and lists no resource
    with pytest.raises(ValueError, match=r"unknown ligand–receptor list 'cellphonedb'.*\(install liana for its res"):
        ligand_receptor("cellphonedb")


@pytest.mark.parametrize(("organism", "n"), [("human", 4620), ("mouse", 3989)])
def test_liana_files_absent_uses_the_installed_liana_offline(tmp_path, organism, n):
    """Without liana_*.csv in the data folder, liana's bundled consensus resource gives the same pairs."""
    from_files = ligand_receptor("liana", organism)
    from_liana = ligand_receptor("liana", organism, path=tmp_path)
    assert len(from_liana) == n
    pd.testing.assert_frame_equal(from_liana, from_files)
    assert from_liana.attrs == {"resource": "liana", "organism": organism}


def test_bad_pairs_and_complexes_arguments():
    pairs = pd.DataFrame({"ligand": ["A"], "receptor": ["B"]})
    with pytest.raises(TypeError, match=r"`pairs` must be a DataFrame with columns 'ligand' and 'receptor', got list"):
        lr_pairs_in_genes([("A", "B")], ["A", "B"])
    with pytest.raises(ValueError, match="complexes: expected 'all' or 'drop', got 'keep'"):
        lr_pairs_in_genes(pairs, ["A", "B"], complexes="keep")


def test_orf_symbols_are_upper_case_and_matched_case_insensitively():
    """GCNG's lower-case file re-cased for human gives ``C1ORF112`` (not HGNC ``C1orf112``), as documented;
    the default case-insensitive presence check returns the data's spelling."""
    human = ligand_receptor("gcng", "human")
    assert {"C1ORF112", "C14ORF1"} <= set(human["ligand"]) | set(human["receptor"])
    assert "C1orf112" in set(ligand_receptor("ramilowski_curated")["ligand"])  # approved symbols kept there
    got = lr_pairs_in_genes(human, ["C1orf112", "PLSCR4", "CCL18", "C14orf1"])
    assert sorted(map(tuple, got[["ligand", "receptor"]].to_numpy())) == [("C1orf112", "PLSCR4"), ("CCL18", "C14orf1")]


def test_complex_subunits_drop_empty_parts():
    assert complex_subunits("ITGA1__ITGB1") == ["ITGA1", "ITGB1"] and complex_subunits("EGFR_") == ["EGFR"]


def test_mouse_case_of_lists_published_in_human_and_liana_mouse_symbols_kept():
    """Human approved symbols re-cased per subunit for mouse (``A2M`` → ``A2m``); liana's mouse list keeps its own
    symbols, which are not plain capitalisation (``H2-Aa``, not ``H2-aa``)."""
    assert ligand_receptor("ramilowski_curated", "mouse").iloc[0][["ligand", "receptor"]].tolist() == ["A2m", "Lrp1"]
    mou = ligand_receptor("liana", "mouse")
    assert "H2-Aa" in set(mou["ligand"]) | set(mou["receptor"])


def test_resource_rows_are_stripped_and_unique_after_re_casing(tmp_path, monkeypatch):
    """A list whose rows differ only by case or surrounding blanks gives one pair (GCNG's file read through a stub
    of ``fetch``; liana resources through a stub of ``select_resource``)."""
    import liana.resource

    import scst.datasets._ligand_receptor as lr

    f = tmp_path / "pairs.txt"
    f.write_text("a2m\tlrp1\n A2M \tLRP1\nvegfa\tkdr\n")
    monkeypatch.setattr(lr, "fetch", lambda dataset, name, path=None: f)
    assert ligand_receptor("gcng", "human").values.tolist() == [["A2M", "LRP1"], ["VEGFA", "KDR"]]
    dup = pd.DataFrame({"ligand": ["A", "A", "C"], "receptor": ["B", "B", "D"], "other": [1, 2, 3]})
    monkeypatch.setattr(liana.resource, "show_resources", lambda: ["toy"])
    monkeypatch.setattr(liana.resource, "select_resource", lambda name: dup)
    toy = ligand_receptor("toy")
    assert toy.values.tolist() == [["A", "B"], ["C", "D"]] and toy.attrs == {"resource": "toy", "organism": "human"}


def test_as_lr_table_rows_without_a_gene_and_bad_tuples():
    from scst.datasets._ligand_receptor import as_lr_table

    df = pd.DataFrame({"ligand": [" L0", None, "L2"], "receptor": ["R0 ", "R1", float("nan")], "w": [1, 2, 3]})
    out = as_lr_table(df)
    assert out.values.tolist() == [["L0", "R0", 1]]  # stripped; rows lacking a gene dropped, extra column kept
    with pytest.raises(ValueError, match="every row lacks a ligand or a receptor"):
        as_lr_table(df.iloc[1:])
    with pytest.raises(ValueError, match="tuples"):
        as_lr_table([("L0", "R0", "extra")])
    assert as_lr_table([("L0", " R0")]).values.tolist() == [["L0", "R0"]]


def test_presence_reports_partial_complexes_only_and_dedups_after_renaming():
    """``missing_subunits`` names complexes with *some* subunits measured (not absent single genes, not complexes
    with no subunit measured); pairs equal after renaming to the data's spelling are kept once; attrs travel."""
    pairs = pd.DataFrame(
        {
            "ligand": ["col1a1", "COL1A1", "NOPE", "VEGFA", "VEGFA"],
            "receptor": ["itga1_itgb1", "ITGA1_ITGB1", "KDR", "ITGA2_ITGB9", "X1_X2"],
        }
    )
    pairs.attrs["resource"] = "toy"
    out = lr_pairs_in_genes(pairs, ["COL1A1", "ITGA1", "ITGB1", "VEGFA", "KDR", "ITGA2"])
    assert out[["ligand", "receptor"]].values.tolist() == [["COL1A1", "ITGA1_ITGB1"]]
    assert out.attrs["missing_subunits"] == {"ITGA2_ITGB9": ["ITGB9"]} and out.attrs["resource"] == "toy"


def test_case_variants_exact_spelling_wins_whatever_the_gene_order():
    # var_names with both cases of a symbol (human + mouse genes): the first in var_names was matched, so reordering
    # the genes silently scored another gene
    pairs = pd.DataFrame({"ligand": ["Cd74", "il6", "TGFB1_Itgb6"], "receptor": ["APP", "IL6R", "App"]})
    genes = ["CD74", "Cd74", "APP", "App", "IL6", "Il6", "IL6R", "TGFB1", "ITGB6"]
    expected = [("Cd74", "APP"), ("IL6", "IL6R"), ("TGFB1_ITGB6", "App")]
    for order in (genes, genes[::-1]):
        out = lr_pairs_in_genes(pairs, order)
        assert list(zip(out["ligand"], out["receptor"])) == expected
