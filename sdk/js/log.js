// Diagnostics, written to the host's log file (never to kubelet).
import { log } from 'flex:volume/log@0.1.0';

export const debug = (message) => log('debug', String(message));
export const info = (message) => log('info', String(message));
export const warn = (message) => log('warn', String(message));
export const error = (message) => log('error', String(message));
