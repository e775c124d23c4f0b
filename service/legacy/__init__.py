"""`python -m service import-legacy`: bring an existing in-process install (its `openalgo.db`,
`logs.db` and `latency.db` SQLite files) into this service's database.

- source.py   reading the legacy files: read-only, streamed in batches (fetchmany)
- crypto.py   the legacy key derivations, to decrypt what the install encrypted
- convert.py  legacy values to this service's: timestamps, booleans, numbers, JSON text
- ledger.py   how far each append-only table got (resumable, never imported twice)
- report.py   per-table counts and skip reasons, and the progress bar
- context.py  what every importer shares (database, keyrings, report, dry run)
- accounts.py, strategies.py, contract.py, records.py   one importer per legacy table
- run.py      the order of the tables, the engine, the final report
"""
