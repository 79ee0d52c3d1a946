//! MQTT packets over any byte stream: a reader that decodes packets as bytes arrive and a
//! writer that batches encoded packets into one buffer. Both are cancel-safe — a
//! `read_packet` or `write_some` future dropped at an `.await` loses no bytes — so a caller
//! may `select!` on them together with timers and other work.

use bytes::BytesMut;
use midge_proto::{Decoder, Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// Bytes read from the stream at a time, at least.
const READ_CHUNK: usize = 8 * 1024;

/// Decodes the packets a broker sends.
#[derive(Debug)]
pub struct PacketReader<R> {
    io: R,
    decoder: Decoder,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader for a connection that sent CONNECT in `version`; packets above
    /// `max_packet_size` bytes are a decode error.
    pub fn new(io: R, version: ProtocolVersion, max_packet_size: u32) -> Self {
        Self {
            io,
            decoder: Decoder::with_version(version, max_packet_size),
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// A packet already complete in the buffer, without reading.
    pub fn try_decode(&mut self) -> Result<Option<Packet>, Error> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }

    /// Reads once from the stream into the buffer. The end of the stream is
    /// [`Error::Closed`].
    pub async fn fill(&mut self) -> Result<(), Error> {
        self.buf.reserve(READ_CHUNK);
        let n = self
            .io
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| Error::network("reading from the broker", e))?;
        if n == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The next packet.
    pub async fn read_packet(&mut self) -> Result<Packet, Error> {
        loop {
            if let Some(packet) = self.try_decode()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// Encodes packets into a buffer and writes it out.
#[derive(Debug)]
pub struct PacketWriter<W> {
    io: W,
    version: ProtocolVersion,
    buf: BytesMut,
    /// Bytes were written since the last flush.
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    /// A writer encoding in `version`.
    pub fn new(io: W, version: ProtocolVersion) -> Self {
        Self {
            io,
            version,
            buf: BytesMut::with_capacity(READ_CHUNK),
            unflushed: false,
        }
    }

    /// Encodes `packet` at the end of the buffer; nothing is written yet.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), Error> {
        packet.encode(self.version, &mut self.buf)?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// True while bytes are queued, or written and not yet flushed.
    pub fn has_work(&self) -> bool {
        !self.buf.is_empty() || self.unflushed
    }

    /// One write of queued bytes; once the buffer is empty, flushes the stream (TLS and
    /// WebSocket streams hold bytes until flushed).
    pub async fn write_some(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.io
                .write_buf(&mut self.buf)
                .await
                .map_err(|e| Error::network("writing to the broker", e))?;
            self.unflushed = true;
        }
        if self.buf.is_empty() && self.unflushed {
            self.io
                .flush()
                .await
                .map_err(|e| Error::network("writing to the broker", e))?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Writes everything queued and flushes.
    pub async fn flush(&mut self) -> Result<(), Error> {
        loop {
            self.write_some().await?;
            if !self.has_work() {
                return Ok(());
            }
        }
    }

    /// Queues `packet` and writes everything queued.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Flushes, then closes the write side (TLS close_notify, WebSocket close frame, TCP
    /// FIN).
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.flush().await?;
        self.io
            .shutdown()
            .await
            .map_err(|e| Error::network("closing the connection", e))
    }
}

#[cfg(test)]
mod tests {
    use midge_proto::{PubResponse, Publish, PublishProperties, QoS};

    use super::*;

    fn publish(payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: 7,
            properties: PublishProperties::default(),
            payload: bytes::Bytes::from_static(payload),
        })
    }

    #[tokio::test]
    async fn packets_written_in_one_batch_are_read_back_one_by_one() {
        let (client, server) = tokio::io::duplex(64);
        let mut writer = PacketWriter::new(client, ProtocolVersion::V311);
        writer.queue(&publish(b"one")).unwrap();
        writer
            .queue(&Packet::PubAck(PubResponse::success(9)))
            .unwrap();
        writer.queue(&publish(&[0u8; 200])).unwrap();
        // The duplex buffer (64 bytes) is smaller than the batch: several writes and reads.
        let write = tokio::spawn(async move { writer.flush().await.map(|()| writer) });
        let mut reader = PacketReader::new(server, ProtocolVersion::V311, 1024);
        assert_eq!(reader.read_packet().await.unwrap(), publish(b"one"));
        assert_eq!(
            reader.read_packet().await.unwrap(),
            Packet::PubAck(PubResponse::success(9))
        );
        assert_eq!(reader.read_packet().await.unwrap(), publish(&[0u8; 200]));
        let mut writer = write.await.unwrap().unwrap();
        writer.shutdown().await.unwrap();
        assert!(matches!(reader.read_packet().await, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn a_packet_above_the_maximum_size_is_a_decode_error() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = PacketWriter::new(client, ProtocolVersion::V5);
        writer.send(&publish(&[1u8; 300])).await.unwrap();
        let mut reader = PacketReader::new(server, ProtocolVersion::V5, 100);
        assert!(matches!(
            reader.read_packet().await,
            Err(Error::Decode(
                midge_proto::DecodeError::PacketTooLarge { .. }
            ))
        ));
    }
}
