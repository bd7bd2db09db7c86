-- Objects whose DEFINER is definer ('user@%'): MariaDB drops such a user without
-- complaint and leaves the objects broken.
SELECT (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE DEFINER = {definer})
     + (SELECT COUNT(*) FROM information_schema.VIEWS WHERE DEFINER = {definer})
     + (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE DEFINER = {definer})
     + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE DEFINER = {definer})
