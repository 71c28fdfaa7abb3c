"""Tools for developing minivmm that are not part of what it installs: generators of the documents'
tables from the model, run from a checkout (``python -m devtools.NAME`` or ``scripts/``) and by the
tests that keep the documents true."""
