"""Many files: `batch` (local.py, on_ray.py for Ray), its tables (export.py), `eval`
(evaluate.py) and the beets plugin's tagger (tagger.py)."""
