-- Live sessions of user, on any host.
SELECT COUNT(*) FROM information_schema.processlist WHERE `USER` = {user}
