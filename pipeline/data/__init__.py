"""Data: the ``Case`` every reader produces and its task (target region), the readers (``sources``),
the slice store ingest writes (``slices``), the patient-level split (``split``) and the synthetic
demo data (``demo``)."""
