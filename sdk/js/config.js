// Non-secret settings from the policy's `[config]` table.
import * as host from 'flex:volume/config@0.1.0';

export const get = (key, fallback = undefined) => host.get(key) ?? fallback;
export const getAll = () => new Map(host.getAll());
