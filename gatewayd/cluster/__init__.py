"""Several nodes on one PostgreSQL database (issue 13): one module per job."""
