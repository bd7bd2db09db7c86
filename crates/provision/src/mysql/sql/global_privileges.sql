-- Global privileges (on *.*) of the account grantee ('user'@'host').
SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = {grantee}
