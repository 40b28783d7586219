package ingest

// EncodeSpooled lets the external tests spool a record as the publisher would.
var EncodeSpooled = encodeSpooled
