"""trust_monai in MONAI Label: an app (``main.py``) serving certified segmentation, synthetic-scan scoring and study
protection, run in its own environment (``scripts/setup_monailabel.sh``; see ``README.md`` here).

:mod:`.service` holds the served models and needs no MONAI Label; :mod:`.tasks` and :mod:`.main` import MONAI Label.
"""
