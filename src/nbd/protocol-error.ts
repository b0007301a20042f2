/**
 * The one error the codecs throw: the peer broke the protocol badly enough
 * that the connection cannot continue (bad magic, impossible lengths). The
 * socket layer answers it by closing that connection and nothing else.
 */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}
