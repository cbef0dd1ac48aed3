"""Keys shared across modules (documented in docs/design.md)."""

UNS_KEY = "scst"
#: ``uns`` key of the embedding recipes (``scst.tl.embed_patches``, carried on by ``scst.pp.scale_by_section``).
UNS_EMBED_KEY = "scst_embed"
TABLE_KEY = "table"
SECTION_KEY = "section"
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
ARRAY_ROW = "array_row"
ARRAY_COL = "array_col"
SPATIAL_KEY = "spatial"
