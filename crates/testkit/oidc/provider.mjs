// An OpenID Connect provider for dbward's single sign-on tests: the certified `oidc-provider`
// package with its development login and consent pages (any login name, any password).
//
// Usage: node provider.mjs PORT CONFIG_FILE
// CONFIG_FILE (JSON) holds {"client_id", "client_secret", "redirect_uris": [...],
// "accounts": {"<login>": {<claims>}}}. It is read again on every claims lookup, so a test
// changes a user's claims by rewriting the file. The issuer is http://127.0.0.1:PORT. Once
// listening, the script prints "listening <issuer>" on one line.
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, configFile] = process.argv.slice(2);
if (!port || !configFile) {
  console.error('usage: node provider.mjs PORT CONFIG_FILE');
  process.exit(2);
}
const readConfig = () => JSON.parse(readFileSync(configFile, 'utf8'));
const config = readConfig();
const issuer = `http://127.0.0.1:${port}`;

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: config.id_token_alg || 'RS256',
  }],
  jwks: { keys: [{ ...rsa, kid: 'rsa-1', use: 'sig', alg: 'RS256' }, { ...ec, kid: 'ec-1', use: 'sig', alg: 'ES256' }] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    profile: ['name', 'preferred_username'],
  },
  scopes: ['openid', 'email', 'groups', 'profile'],
  pkce: { required: () => true },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, ...((readConfig().accounts || {})[id] || {}) }),
  }),
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
