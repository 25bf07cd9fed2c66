// The verbs, unit-tested with plain Node against a fake host (testing/fake-host.js): `npm
// test`. No componentize-js, no wasm, no root.
import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import { host } from '../testing/fake-host.js';
import { {{class}} } from '../src/driver.js';
import { DriverError, Options } from '../vendor/flex-driver/flex-driver.js';

const DIR = '/var/lib/kubelet/pods/u1/volumes/{{name}}/scratch';
const driver = new {{class}}();
const tmpfs = (options) => ['mount', { source: 'tmpfs', target: DIR, fsType: 'tmpfs', options, bind: false }];

beforeEach(() => host.reset());

test('init reports a driver that is not attachable', () => {
  const caps = driver.init();
  assert.equal(caps.attach, false);
  assert.equal(caps.fsGroup, false);
});

test('mount defaults to 64 mebibytes writable by all', () => {
  driver.mount(DIR, new Options());
  assert.deepEqual(host.calls, [
    ['isMountpoint', DIR],
    tmpfs(['nosuid', 'nodev', 'size=67108864', 'mode=0777']),
  ]);
  assert.ok(host.mounted.has(DIR));
});

test('mount applies size, read-only and fsGroup', () => {
  driver.mount(DIR, new Options({ readOnly: true, fsGroup: 2000, extra: { size: '8Mi' } }));
  assert.deepEqual(host.calls.at(-1), tmpfs(['nosuid', 'nodev', 'size=8388608', 'ro', 'gid=2000', 'mode=2775']));
});

test('a bad size fails before any host call', () => {
  for (const size of ['0', '2Ti', 'lots']) {
    assert.throws(() => driver.mount(DIR, new Options({ extra: { size } })), DriverError, size);
  }
  assert.deepEqual(host.calls, []);
});

test('mount is idempotent', () => {
  driver.mount(DIR, new Options());
  host.calls = [];
  driver.mount(DIR, new Options()); // the retry only looks
  assert.deepEqual(host.calls, [['isMountpoint', DIR]]);
});

test('a host refusal reaches kubelet', () => {
  host.failNext.set('mount', 'denied: option size=67108864 is not granted');
  assert.throws(() => driver.mount(DIR, new Options()), {
    name: 'DriverError',
    message: 'denied: option size=67108864 is not granted',
  });
  assert.equal(host.mounted.size, 0);
});

test('unmount undoes mount and accepts a directory not mounted', () => {
  driver.mount(DIR, new Options());
  driver.unmount(DIR);
  assert.equal(host.mounted.size, 0);
  host.calls = [];
  driver.unmount(DIR);
  assert.deepEqual(host.calls, [['isMountpoint', DIR]]);
});
