-- 1 when the connection runs as the user, else 0.
SELECT COUNT(*) FROM information_schema.processlist WHERE `ID` = {id} AND `USER` = {user}
