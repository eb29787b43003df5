"""Several nodes on one PostgreSQL database: one module per job."""
