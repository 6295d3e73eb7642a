/*
 * Stock grpc-java against a real tessera-agent: what this proves.
 *
 * grpc-java (Debian's libgrpc-java 1.41 on Netty 4.1.48) reaches the agent's
 * unix socket the way java-spiffe does: NettyChannelBuilder.forAddress(new
 * DomainSocketAddress(path)), plaintext, and grpc-java's DEFAULT authority for
 * that address, which is the socket path itself: every request carries
 * ":authority: /path/to/workload.sock", which the HTTP/2 server under tonic
 * used to reset with PROTOCOL_ERROR. Nothing here overrides the authority; each
 * command prints the one grpc-java chose so the test can check it still is the
 * path (else the test would prove nothing).
 *
 * One departure from stock, below HTTP/2: Netty's own unix-socket channel
 * (EpollDomainSocketChannel) needs the JNI library
 * libnetty_transport_native_epoll_x86_64.so, which Debian's libnetty-java does
 * not ship (only its classes) and no reachable registry has. So the bytes travel
 * through UnixChannel, a minimal Netty channel over JDK 17's unix-domain
 * SocketChannel (JEP 380). It moves bytes only; the HTTP/2 frames, HPACK and
 * headers are grpc-java's and Netty's codec, unchanged.
 *
 * Messages are hand-encoded protobuf (a byte-array marshaller, no protoc): the
 * fields read and written are those of proto/workload.proto and
 * proto/tessera/v1/tasks.proto. Run by tests/tests/interop_java.rs; each command
 * prints one JSON object on stdout. Private keys are never printed.
 *
 *   StockGrpcJava x509 SOCKET
 *   StockGrpcJava tasks SOCKET SERVER SUBJECT SCOPE...
 */

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientInterceptors;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.MetadataUtils;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelConfig;
import io.netty.channel.ChannelFuture;
import io.netty.channel.ChannelMetadata;
import io.netty.channel.DefaultChannelConfig;
import io.netty.channel.FileRegion;
import io.netty.channel.RecvByteBufAllocator;
import io.netty.channel.nio.AbstractNioByteChannel;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.unix.DomainSocketAddress;
import io.netty.util.concurrent.DefaultThreadFactory;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;

public final class StockGrpcJava {
  private static final CallOptions TEN_SECONDS = CallOptions.DEFAULT.withDeadlineAfter(10, TimeUnit.SECONDS);

  public static void main(String[] args) throws Exception {
    if (args.length < 2) {
      throw new IllegalArgumentException("usage: StockGrpcJava x509 SOCKET | tasks SOCKET SERVER SUBJECT SCOPE...");
    }
    NioEventLoopGroup loop = new NioEventLoopGroup(1, new DefaultThreadFactory("stock-grpc-java", true));
    ManagedChannel managed = NettyChannelBuilder.forAddress(new DomainSocketAddress(args[1]))
        .eventLoopGroup(loop)
        .channelType(UnixChannel.class)
        .usePlaintext()
        .build();
    Metadata workloadHeader = new Metadata();
    workloadHeader.put(Metadata.Key.of("workload.spiffe.io", Metadata.ASCII_STRING_MARSHALLER), "true");
    Channel channel = ClientInterceptors.intercept(managed, MetadataUtils.newAttachHeadersInterceptor(workloadHeader));
    Json out = new Json().str("authority", managed.authority());
    try {
      switch (args[0]) {
        case "x509" -> x509(channel, out);
        case "tasks" -> tasks(channel, out, args[2], args[3], Arrays.asList(args).subList(4, args.length));
        default -> throw new IllegalArgumentException("unknown command " + args[0]);
      }
    } finally {
      managed.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      loop.shutdownGracefully(0, 1, TimeUnit.SECONDS);
    }
    System.out.println(out.end());
  }

  /** FetchX509SVID: the first message of the server stream. */
  static void x509(Channel channel, Json out) {
    List<String> ids = new ArrayList<>();
    List<String> hints = new ArrayList<>();
    for (Pb.Field f : firstX509Response(channel).all(1)) {
      Pb svid = Pb.parse(f.bytes);
      ids.add(svid.string(1));
      hints.add(svid.string(5));
      if (ids.size() == 1) { // the default SVID
        out.num("chain_der_len", svid.bytes(2).length)
            .bool("has_key", svid.bytes(3).length > 0)
            .num("bundle_der_len", svid.bytes(4).length);
      }
    }
    out.strs("svids", ids).strs("hints", hints);
  }

  /** BeginTask, ListTasks, the task's SVID on FetchX509SVID by hint, EndTask. */
  static void tasks(Channel channel, Json out, String server, String subject, List<String> scopes) {
    Pb.Writer begin = new Pb.Writer()
        .string(1, "interop: stock grpc-java")
        .string(2, subject)
        .string(3, server);
    scopes.forEach(s -> begin.string(4, s));
    Pb begun = Pb.parse(unary(channel, "tessera.v1.Tasks/BeginTask", begin.uint(5, 300).bytes()));
    Pb task = Pb.parse(begun.bytes(1));
    Pb svid = Pb.parse(begun.bytes(2));
    String taskId = task.string(1);
    out.str("task_id", taskId)
        .str("spiffe_id", task.string(2))
        .str("svid_hint", svid.string(5))
        .num("svid_der_len", svid.bytes(2).length);

    // The empty ListTasksRequest encodes to zero bytes.
    Pb listed = Pb.parse(unary(channel, "tessera.v1.Tasks/ListTasks", new byte[0]));
    List<String> ids = new ArrayList<>();
    for (Pb.Field f : listed.all(1)) {
      ids.add(Pb.parse(f.bytes).string(1));
    }
    out.strs("listed", ids);

    List<String> hints = new ArrayList<>();
    for (Pb.Field f : firstX509Response(channel).all(1)) {
      hints.add(Pb.parse(f.bytes).string(5));
    }
    out.strs("stream_hints", hints);

    Pb ended = Pb.parse(unary(channel, "tessera.v1.Tasks/EndTask", new Pb.Writer().string(1, taskId).bytes()));
    out.str("end_reason", Pb.parse(ended.bytes(1)).string(12));
  }

  static Pb firstX509Response(Channel channel) {
    MethodDescriptor<byte[], byte[]> fetch = method("SpiffeWorkloadAPI/FetchX509SVID", MethodDescriptor.MethodType.SERVER_STREAMING);
    // The empty X509SVIDRequest encodes to zero bytes. The stream never ends by
    // itself; the deadline cancels it once the channel shuts down.
    Iterator<byte[]> stream = ClientCalls.blockingServerStreamingCall(channel, fetch, TEN_SECONDS, new byte[0]);
    return Pb.parse(stream.next());
  }

  static byte[] unary(Channel channel, String name, byte[] request) {
    return ClientCalls.blockingUnaryCall(channel, method(name, MethodDescriptor.MethodType.UNARY), TEN_SECONDS, request);
  }

  static MethodDescriptor<byte[], byte[]> method(String name, MethodDescriptor.MethodType type) {
    return MethodDescriptor.<byte[], byte[]>newBuilder()
        .setFullMethodName(name)
        .setType(type)
        .setRequestMarshaller(RAW)
        .setResponseMarshaller(RAW)
        .build();
  }

  static final MethodDescriptor.Marshaller<byte[]> RAW = new MethodDescriptor.Marshaller<>() {
    @Override
    public InputStream stream(byte[] value) {
      return new ByteArrayInputStream(value);
    }

    @Override
    public byte[] parse(InputStream stream) {
      try {
        return stream.readAllBytes();
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
  };

  /**
   * A Netty channel over a JDK unix-domain SocketChannel, standing in for
   * EpollDomainSocketChannel (see the header). Client side only.
   */
  public static final class UnixChannel extends AbstractNioByteChannel {
    private static final ChannelMetadata METADATA = new ChannelMetadata(false);
    private final ChannelConfig config = new DefaultChannelConfig(this);
    private volatile SocketAddress remote;

    public UnixChannel() throws IOException {
      super(null, SocketChannel.open(StandardProtocolFamily.UNIX));
    }

    private SocketChannel socket() {
      return (SocketChannel) javaChannel();
    }

    @Override
    protected boolean doConnect(SocketAddress remoteAddress, SocketAddress localAddress) throws Exception {
      String path = ((DomainSocketAddress) remoteAddress).path();
      boolean connected = socket().connect(UnixDomainSocketAddress.of(path));
      if (!connected) {
        selectionKey().interestOps(SelectionKey.OP_CONNECT);
      }
      remote = remoteAddress;
      return connected;
    }

    @Override
    protected void doFinishConnect() throws Exception {
      if (!socket().finishConnect()) {
        throw new IOException("unix socket connect did not finish");
      }
    }

    @Override
    protected int doReadBytes(ByteBuf buf) throws Exception {
      RecvByteBufAllocator.Handle handle = unsafe().recvBufAllocHandle();
      handle.attemptedBytesRead(buf.writableBytes());
      return buf.writeBytes(socket(), handle.attemptedBytesRead());
    }

    @Override
    protected int doWriteBytes(ByteBuf buf) throws Exception {
      return buf.readBytes(socket(), buf.readableBytes());
    }

    @Override
    protected long doWriteFileRegion(FileRegion region) {
      throw new UnsupportedOperationException("file regions");
    }

    @Override
    protected ChannelFuture shutdownInput() {
      try {
        socket().shutdownInput();
        return newSucceededFuture();
      } catch (IOException e) {
        return newFailedFuture(e);
      }
    }

    @Override
    protected void doClose() throws Exception {
      super.doClose();
      socket().close();
    }

    @Override
    protected void doDisconnect() throws Exception {
      doClose();
    }

    @Override
    protected void doBind(SocketAddress localAddress) {
      throw new UnsupportedOperationException("client only");
    }

    @Override
    protected SocketAddress localAddress0() {
      return null;
    }

    @Override
    protected SocketAddress remoteAddress0() {
      return remote;
    }

    @Override
    public boolean isActive() {
      return socket().isOpen() && socket().isConnected();
    }

    @Override
    public ChannelConfig config() {
      return config;
    }

    @Override
    public ChannelMetadata metadata() {
      return METADATA;
    }
  }

  /** Just enough protobuf: a message's top-level fields, in order. */
  static final class Pb {
    record Field(int number, long varint, byte[] bytes) {}

    private final List<Field> fields = new ArrayList<>();

    static Pb parse(byte[] message) {
      Pb pb = new Pb();
      ByteBuffer in = ByteBuffer.wrap(message);
      while (in.hasRemaining()) {
        long tag = varint(in);
        int number = (int) (tag >>> 3);
        switch ((int) (tag & 7)) {
          case 0 -> pb.fields.add(new Field(number, varint(in), null));
          case 1 -> in.position(in.position() + 8);
          case 2 -> {
            byte[] b = new byte[Math.toIntExact(varint(in))];
            in.get(b);
            pb.fields.add(new Field(number, 0, b));
          }
          case 5 -> in.position(in.position() + 4);
          default -> throw new IllegalArgumentException("unsupported wire type in tag " + tag);
        }
      }
      return pb;
    }

    private static long varint(ByteBuffer in) {
      long v = 0;
      for (int shift = 0; shift < 64; shift += 7) {
        byte b = in.get();
        v |= (long) (b & 0x7f) << shift;
        if (b >= 0) {
          return v;
        }
      }
      throw new IllegalArgumentException("varint over 10 bytes");
    }

    List<Field> all(int number) {
      return fields.stream().filter(f -> f.number == number && f.bytes != null).toList();
    }

    /** The last occurrence wins, as in protobuf; absent means the default. */
    byte[] bytes(int number) {
      List<Field> all = all(number);
      return all.isEmpty() ? new byte[0] : all.get(all.size() - 1).bytes;
    }

    String string(int number) {
      return new String(bytes(number), StandardCharsets.UTF_8);
    }

    static final class Writer {
      private final ByteArrayOutputStream out = new ByteArrayOutputStream();

      Writer string(int number, String value) {
        byte[] b = value.getBytes(StandardCharsets.UTF_8);
        varint((number << 3) | 2);
        varint(b.length);
        out.writeBytes(b);
        return this;
      }

      Writer uint(int number, long value) {
        varint(number << 3);
        varint(value);
        return this;
      }

      private void varint(long v) {
        while ((v & ~0x7fL) != 0) {
          out.write((int) ((v & 0x7f) | 0x80));
          v >>>= 7;
        }
        out.write((int) v);
      }

      byte[] bytes() {
        return out.toByteArray();
      }
    }
  }

  /** One flat JSON object. */
  static final class Json {
    private final StringBuilder sb = new StringBuilder("{");

    private Json key(String k) {
      if (sb.length() > 1) {
        sb.append(',');
      }
      quote(k);
      sb.append(':');
      return this;
    }

    Json str(String k, String v) {
      key(k).quote(v);
      return this;
    }

    Json num(String k, long v) {
      key(k).sb.append(v);
      return this;
    }

    Json bool(String k, boolean v) {
      key(k).sb.append(v);
      return this;
    }

    Json strs(String k, List<String> vs) {
      key(k).sb.append('[');
      for (int i = 0; i < vs.size(); i++) {
        if (i > 0) {
          sb.append(',');
        }
        quote(vs.get(i));
      }
      sb.append(']');
      return this;
    }

    private void quote(String s) {
      sb.append('"');
      for (char c : s.toCharArray()) {
        if (c == '"' || c == '\\') {
          sb.append('\\').append(c);
        } else if (c < 0x20) {
          sb.append(String.format("\\u%04x", (int) c));
        } else {
          sb.append(c);
        }
      }
      sb.append('"');
    }

    String end() {
      return sb.append('}').toString();
    }
  }
}
