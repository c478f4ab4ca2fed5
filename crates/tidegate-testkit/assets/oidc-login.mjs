// Plays the user in a browser: follows an authorization URL through the provider's login and
// consent pages and prints the final redirect (to the relying party, with `code` and `state`).
// Usage: node oidc-login.mjs <authorization-url> <login>
import http from 'node:http';

const [authorizeUrl, login] = process.argv.slice(2);
const origin = new URL(authorizeUrl).origin;
const jar = new Map();

function step(url, form) {
  const body = form ? new URLSearchParams(form).toString() : undefined;
  const headers = { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
  if (body) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    headers['content-length'] = Buffer.byteLength(body);
  }
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method: form ? 'POST' : 'GET', headers }, (response) => {
      for (const cookie of response.headers['set-cookie'] ?? []) {
        const [pair] = cookie.split(';');
        const eq = pair.indexOf('=');
        jar.set(pair.slice(0, eq), pair.slice(eq + 1));
      }
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, location: response.headers.location, text }));
    });
    request.on('error', reject);
    request.end(body);
  });
}

let url = authorizeUrl;
let response = await step(url);
for (let hops = 0; hops < 20; hops += 1) {
  if (response.status >= 300 && response.status < 400) {
    url = new URL(response.location, url).href;
    if (!url.startsWith(origin)) {
      console.log(url);
      process.exit(0);
    }
    response = await step(url);
  } else if (response.status === 200 && url.includes('/interaction/')) {
    const form = response.text.includes('name="login"')
      ? { prompt: 'login', login, password: 'any' }
      : { prompt: 'consent' };
    response = await step(url, form);
  } else {
    console.error(`unexpected HTTP ${response.status} at ${url}: ${response.text.slice(0, 500)}`);
    process.exit(1);
  }
}
console.error('too many redirects');
process.exit(1);
