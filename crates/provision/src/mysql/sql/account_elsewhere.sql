-- Accounts with the user's name on another host than '%', or a role of that name: someone else's,
-- never to be twinned by a provisioned user.
SELECT COUNT(*) FROM mysql.user WHERE `User` = {user} AND (`Host` <> '%' OR is_role = 'Y')
