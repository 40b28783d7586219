DROP TABLE IF EXISTS read_tokens;
