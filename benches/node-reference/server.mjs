// The Node.js reference for `token-service bench`: node-oidc-provider issuing ES256 JWT
// access tokens at its token endpoint, two ways (see load.sh):
// - client_credentials: an access token per request, nothing stored;
// - `urn:bench:issue`, what GenerateTokens does: per request a grant, an access token and an
//   opaque refresh token, the grant and the refresh token stored in the provider's
//   in-memory adapter.
import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'bench-es256' };
const ISSUE = 'urn:bench:issue';
const RESOURCE = 'urn:api';
const resource = {
  scope: 'api',
  audience: RESOURCE,
  accessTokenTTL: 900,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'ES256' } },
};

const provider = new Provider('http://127.0.0.1:3000', {
  clients: [{
    client_id: 'bench',
    client_secret: 'bench-secret-0123456789abcdef',
    grant_types: ['client_credentials', ISSUE],
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
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => resource,
    },
  },
});

let issued = 0;
provider.registerGrantType(ISSUE, async (ctx) => {
  const { client } = ctx.oidc;
  issued += 1;
  const accountId = `user-${issued}`;
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addResourceScope(RESOURCE, 'api');
  const grantId = await grant.save();
  const common = { accountId, client, grantId, gty: ISSUE, scope: 'api' };
  const access = new provider.AccessToken(common);
  access.resourceServer = new provider.ResourceServer(RESOURCE, resource);
  const accessToken = await access.save();
  const refreshToken = await new provider.RefreshToken({ ...common, resource: RESOURCE }).save();
  ctx.body = {
    access_token: accessToken,
    refresh_token: refreshToken,
    token_type: 'Bearer',
    expires_in: access.expiration,
    scope: 'api',
  };
});

provider.listen(3000, '127.0.0.1', () => console.log('listening'));
