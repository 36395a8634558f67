"""The lab's Hydra configs; importing the package registers the config schemas (``schemas.py``)."""

from retrieval_lab.conf.schemas import register as _register_schemas

_register_schemas()
