// Module resolution hooks (node:module `register`): every `flex:volume/<interface>@<version>`
// import is the fake host.
const FAKE_HOST = new URL('./fake-host.js', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith('flex:volume/')) return { url: FAKE_HOST, shortCircuit: true };
  return nextResolve(specifier, context);
}
