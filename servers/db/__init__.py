"""The database routes (/db, /queries, /fortunes, /updates, /dbsleep): real queries to
PostgreSQL through each world's own driver.

`rows` is what the routes answer, free of I/O (the contract uses it); `config` the settings and
faults every server shares (one pool per process, one deadline, 502/503/504); `world.sql` the
tables. Each driver's module is imported only by the servers that use it: `sync_pool` (psycopg
3, for gevent, gevent-h11, threads-h11 and trio's threads), `asyncpg_pool` (aiohttp and
asyncio-h11)."""
