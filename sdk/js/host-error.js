// A host import's `result` error (thrown by componentize-js as an Error whose `payload` is the
// host's message) as a DriverError, so a verb may let it escape as its Failure.
import { DriverError } from './flex-driver.js';

export function checked(call, ...args) {
  try {
    return call(...args);
  } catch (error) {
    if (error && typeof error.payload === 'string') {
      throw new DriverError(error.payload);
    }
    throw error;
  }
}
