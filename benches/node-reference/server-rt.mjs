// Reference variant mirroring GenerateTokens: per request a grant, an ES256 JWT access token
// and an opaque refresh token, both grant and refresh token stored in oidc-provider's
// default in-memory adapter.
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'bench-es256' };
const GTY = 'urn:bench:issue';
const resource = {
  scope: 'api',
  audience: 'urn:api',
  accessTokenTTL: 900,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'ES256' } },
};

const provider = new Provider('http://127.0.0.1:3000', {
  clients: [{
    client_id: 'bench',
    client_secret: 'bench-secret-0123456789abcdef',
    grant_types: ['client_credentials', GTY, 'refresh_token'],
    redirect_uris: [],
    response_types: [],
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:api',
      useGrantedResource: () => true,
      getResourceServerInfo: () => resource,
    },
  },
});

let n = 0;
provider.registerGrantType(GTY, async (ctx) => {
  const { client } = ctx.oidc;
  const accountId = `user-${n += 1}`;
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addResourceScope('urn:api', 'api');
  const grantId = await grant.save();
  const server = new provider.ResourceServer('urn:api', resource);
  const at = new provider.AccessToken({ accountId, client, grantId, gty: GTY, scope: 'api' });
  at.resourceServer = server;
  const accessToken = await at.save();
  const rt = new provider.RefreshToken({ accountId, client, grantId, gty: GTY, scope: 'api', resource: 'urn:api' });
  const refreshToken = await rt.save();
  ctx.body = { access_token: accessToken, refresh_token: refreshToken, token_type: 'Bearer', expires_in: at.expiration, scope: 'api' };
});

provider.listen(3000, '127.0.0.1', () => console.log('listening'));
