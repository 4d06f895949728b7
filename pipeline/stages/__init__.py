"""One thin module per DVC stage, each with ``run(params)``; the logic lives elsewhere."""
