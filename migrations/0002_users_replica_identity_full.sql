-- An UPDATE that changes a user's id while leaving a long (TOASTed) display_name untouched
-- carries no display_name in its new row; with the whole old row in the WAL the projector
-- can still move the name to the new id. Updates of users are rare, so FULL is cheap here.
ALTER TABLE users REPLICA IDENTITY FULL;
