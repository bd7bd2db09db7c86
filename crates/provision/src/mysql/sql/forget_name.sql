-- Forgets the record of a dropped user.
DELETE FROM {schema}.user_attributes WHERE `User` = {user}
