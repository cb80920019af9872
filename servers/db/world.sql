-- The tables of TechEmpower's database test types (/db, /queries, /fortunes, /updates), the one
-- file every user of stackbench's database loads: the tests, `stackbench run`, compose and
-- Kubernetes. Loaded with psql -v ON_ERROR_STOP=1 into an empty database; it drops nothing.
--
-- World: 10,000 rows, as TechEmpower's. Their randomNumber is random() at load time; here it is
-- a fixed permutation of 1..10000 (7919 is prime, so id -> 1 + id*7919 mod 10000 is one-to-one),
-- so that /db?id=N and /queries?seed=S answer the same bytes on every server and every run.
-- Column names unquoted, as TechEmpower's create-postgres.sql has them: PostgreSQL folds
-- randomNumber to randomnumber; the JSON key stays randomNumber.
CREATE TABLE world (
    id integer NOT NULL PRIMARY KEY,
    randomNumber integer NOT NULL DEFAULT 0
);
INSERT INTO world (id, randomNumber)
SELECT x.id, 1 + (x.id * 7919) % 10000 FROM generate_series(1, 10000) AS x(id);

-- Fortune: the 12 rows of TechEmpower's Fortunes test type (their toolset's
-- create-postgres.sql), written here from the team's knowledge of that file without a network
-- look-up: check them against it before quoting results as TechEmpower-comparable. Row 11 tests
-- HTML escaping, row 12 UTF-8; the servers add a 13th, id 0, at request time.
CREATE TABLE fortune (
    id integer NOT NULL PRIMARY KEY,
    message varchar(2048) NOT NULL
);
INSERT INTO fortune (id, message) VALUES
    (1, 'fortune: No such file or directory'),
    (2, 'A computer scientist is someone who fixes things that aren''t broken.'),
    (3, 'After enough decimal places, nobody gives a damn.'),
    (4, 'A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1'),
    (5, 'A computer program does what you tell it to do, not what you want it to do.'),
    (6, 'Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen'),
    (7, 'Any program that runs right is obsolete.'),
    (8, 'A list is only as strong as its weakest link. — Donald Knuth'),
    (9, 'Feature: A bug with seniority.'),
    (10, 'Computers make very fast, very accurate mistakes.'),
    (11, '<script>alert("This should not be displayed in a browser alert box.");</script>'),
    (12, 'フレームワークのベンチマーク');

ANALYZE world;
ANALYZE fortune;
