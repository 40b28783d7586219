DROP TABLE IF EXISTS events;

--bun:split

DROP TABLE IF EXISTS ads;
