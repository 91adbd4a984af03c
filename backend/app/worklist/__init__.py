"""The triage worklist's store: every analysed study, the radiologist's reads of it, and the
figures that compare the two (``monitoring``).

``models`` (SQLAlchemy 2 tables), ``store`` (the engine, Alembic's upgrade to head at
start-up, and the one repository every route goes through), ``migrations`` (Alembic). A
SQLite file by default; PostgreSQL (psycopg 3) when ``DATABASE_URL`` is set. Nothing here
knows HTTP: the routes (``api/routes/worklist.py``, ``monitoring.py``) shape its answers.
"""
