"""The database: engine and sessions, the schema's tables, and migrating a database to the newest schema."""
