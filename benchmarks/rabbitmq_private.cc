#include "rabbitmq_private.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/time/clock.h"
#include "amqp_c.h"
#include "fmt/core.h"

namespace warren_bench {

namespace {

namespace fs = std::filesystem;

constexpr const char* kServer = "/usr/lib/rabbitmq/bin/rabbitmq-server";
constexpr const char* kCtl = "/usr/lib/rabbitmq/bin/rabbitmqctl";
constexpr const char* kServerLibDir = "/usr/lib/rabbitmq/lib";

bool IsExecutable(const std::string& path) {
  return ::access(path.c_str(), X_OK) == 0;
}

// The epmd binary: /usr/bin/epmd, else the one inside the Erlang runtime.
std::string FindEpmd() {
  if (IsExecutable("/usr/bin/epmd")) return "/usr/bin/epmd";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/erlang", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("erts-", 0) == 0) {
      const std::string candidate = (entry.path() / "bin" / "epmd").string();
      if (IsExecutable(candidate)) return candidate;
    }
  }
  return "";
}

// The version from the name of the server's library directory
// (rabbitmq_server-3.10.8), or "".
std::string ServerVersion() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kServerLibDir, ec)) {
    const std::string name = entry.path().filename().string();
    constexpr std::string_view kPrefix = "rabbitmq_server-";
    if (name.rfind(kPrefix, 0) == 0) return name.substr(kPrefix.size());
  }
  return "";
}

// A TCP port that was free on 127.0.0.1 a moment ago (0 on failure), other
// than those in `taken`.
int PickFreePort(const std::vector<int>& taken) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    ::close(fd);
    if (port == 0) return 0;
    bool clash = false;
    for (int t : taken) clash = clash || t == port;
    if (!clash) return port;
  }
  return 0;
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

std::string ReadTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.size() > max_bytes) s = "..." + s.substr(s.size() - max_bytes);
  return s;
}

// Starts `argv` with `env`, stdout and stderr appended to `log`, in a new
// process group. Returns the PID, or -1.
pid_t Spawn(const std::vector<std::string>& argv,
            const std::vector<std::string>& env, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);

  std::vector<char*> args;
  for (const std::string& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attr,
                             args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  return rc == 0 ? pid : -1;
}

// Waits up to `timeout` for `pid`; returns its exit status, 128 + signal, or
// -1 when it is still running (or is not our child).
int WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (r < 0 && errno != EINTR) return -1;
    if (absl::Now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Whether something accepts TCP connections on 127.0.0.1:port.
bool Listening(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok =
      ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

// Ends the process group `pgid` (a child we started): SIGTERM, then SIGKILL.
void KillGroup(pid_t pgid) {
  if (pgid <= 0) return;
  ::kill(-pgid, SIGTERM);
  if (WaitFor(pgid, absl::Seconds(10)) >= 0) {
    ::kill(-pgid, SIGKILL);  // stragglers of the group, if any
    return;
  }
  ::kill(-pgid, SIGKILL);
  WaitFor(pgid, absl::Seconds(5));
}

}  // namespace

std::vector<std::string> PrivateRabbitMq::Environment() const {
  std::vector<std::string> env = {
      "HOME=" + dir_ + "/home",
      "RABBITMQ_CONF_ENV_FILE=" + dir_ + "/rabbitmq-env.conf",
      "ERL_EPMD_ADDRESS=127.0.0.1",
      fmt::format("ERL_EPMD_PORT={}", epmd_port_),
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG=C.UTF-8",
      "LC_ALL=C.UTF-8",
  };
  return env;
}

int PrivateRabbitMq::RunCtl(const std::vector<std::string>& args,
                            absl::Duration timeout, std::string* output) {
  std::vector<std::string> argv = {kCtl, "-n", node_};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string log = dir_ + "/ctl.log";
  std::error_code ec;
  fs::remove(log, ec);
  const pid_t pid = Spawn(argv, Environment(), log);
  if (pid < 0) return -1;
  int rc = WaitFor(pid, timeout);
  if (rc < 0) {
    KillGroup(pid);  // its own process group: the CLI and its Erlang VM
    rc = -1;
  }
  if (output != nullptr) *output += ReadTail(log, 2000);
  return rc;
}

std::unique_ptr<PrivateRabbitMq> PrivateRabbitMq::Start(absl::Duration timeout,
                                                        std::string* error) {
  if (!IsExecutable(kServer) || !IsExecutable(kCtl)) {
    *error =
        "rabbitmq-server is not installed (apt-get install rabbitmq-server)";
    return nullptr;
  }
  const std::string epmd = FindEpmd();
  if (epmd.empty()) {
    *error = "epmd not found (apt-get install erlang-base)";
    return nullptr;
  }

  std::unique_ptr<PrivateRabbitMq> rmq(new PrivateRabbitMq());
  char tmpl[] = "/tmp/warren-rmq-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    *error = fmt::format("mkdtemp failed: {}", std::strerror(errno));
    return nullptr;
  }
  rmq->dir_ = tmpl;
  const std::string& dir = rmq->dir_;
  rmq->version_ = ServerVersion();
  rmq->node_ = fmt::format("warren_bench_{}@localhost", ::getpid());
  rmq->amqp_port_ = PickFreePort({});
  rmq->dist_port_ = PickFreePort({rmq->amqp_port_});
  rmq->epmd_port_ = PickFreePort({rmq->amqp_port_, rmq->dist_port_});
  if (rmq->amqp_port_ == 0 || rmq->dist_port_ == 0 || rmq->epmd_port_ == 0) {
    *error = "could not find free ports on 127.0.0.1";
    return nullptr;  // the destructor removes the directory
  }

  // HOME with the Erlang cookie (mode 0400), shared by server and CLI.
  std::error_code ec;
  for (const char* sub : {"home", "mnesia", "log"}) {
    fs::create_directories(dir + "/" + sub, ec);
  }
  std::string cookie;
  std::random_device rd;
  std::uniform_int_distribution<int> letter('A', 'Z');
  for (int i = 0; i < 20; ++i) cookie.push_back(static_cast<char>(letter(rd)));
  const std::string cookie_path = dir + "/home/.erlang.cookie";
  if (!WriteFile(cookie_path, cookie) || ::chmod(cookie_path.c_str(), 0400)) {
    *error = "could not write the Erlang cookie";
    return nullptr;
  }

  const std::string erl_args =
      "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false";
  const bool files_ok =
      WriteFile(dir + "/rabbitmq.conf",
                fmt::format("listeners.tcp.1 = 127.0.0.1:{}\n"
                            "loopback_users.guest = true\n"
                            "disk_free_limit.absolute = 50MB\n",
                            rmq->amqp_port_)) &&
      WriteFile(dir + "/enabled_plugins", "[].\n") &&
      WriteFile(dir + "/rabbitmq-env.conf",
                fmt::format("NODENAME={node}\n"
                            "NODE_IP_ADDRESS=127.0.0.1\n"
                            "NODE_PORT={amqp}\n"
                            "DIST_PORT={dist}\n"
                            "CONFIG_FILE={dir}/rabbitmq.conf\n"
                            "ENABLED_PLUGINS_FILE={dir}/enabled_plugins\n"
                            "MNESIA_BASE={dir}/mnesia\n"
                            "LOG_BASE={dir}/log\n"
                            "PID_FILE={dir}/rabbit.pid\n"
                            "SERVER_ADDITIONAL_ERL_ARGS=\"{erl}\"\n"
                            "CTL_ERL_ARGS=\"{erl}\"\n",
                            fmt::arg("node", rmq->node_),
                            fmt::arg("amqp", rmq->amqp_port_),
                            fmt::arg("dist", rmq->dist_port_),
                            fmt::arg("dir", dir), fmt::arg("erl", erl_args)));
  if (!files_ok) {
    *error = "could not write the configuration files in " + dir;
    return nullptr;
  }

  // Our own epmd, in the foreground (no -daemon), stopped by its PID.
  rmq->epmd_pid_ = Spawn(
      {epmd, "-address", "127.0.0.1", "-port", std::to_string(rmq->epmd_port_)},
      rmq->Environment(), dir + "/epmd.log");
  if (rmq->epmd_pid_ < 0) {
    *error = "could not start epmd";
    return nullptr;
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (!Listening(rmq->epmd_port_)) {
    if (WaitFor(rmq->epmd_pid_, absl::ZeroDuration()) >= 0) {
      rmq->epmd_pid_ = -1;
      *error = "epmd exited: " + ReadTail(dir + "/epmd.log", 500);
      return nullptr;
    }
    if (absl::Now() >= deadline) {
      *error = "epmd did not start listening";
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  rmq->server_pid_ = Spawn({kServer}, rmq->Environment(), dir + "/server.log");
  if (rmq->server_pid_ < 0) {
    *error = "could not start rabbitmq-server";
    return nullptr;
  }

  // await_startup fails at once while the node has not registered with epmd
  // yet, so retry it until it succeeds or the deadline passes.
  std::string ctl_output;
  for (;;) {
    if (WaitFor(rmq->server_pid_, absl::ZeroDuration()) >= 0) {
      rmq->server_pid_ = -1;
      *error = "rabbitmq-server exited during start-up: " +
               ReadTail(dir + "/server.log", 1500);
      return nullptr;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      *error = fmt::format(
          "rabbitmq-server did not start within {}; last rabbitmqctl "
          "output: {}",
          absl::FormatDuration(timeout), ctl_output);
      return nullptr;
    }
    ctl_output.clear();
    const int secs =
        std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(left)));
    if (rmq->RunCtl({"await_startup", "--timeout", std::to_string(secs)},
                    left + absl::Seconds(5), &ctl_output) == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  return rmq;
}

void PrivateRabbitMq::Stop() {
  if (server_pid_ > 0) {
    RunCtl({"stop"}, absl::Seconds(30), nullptr);
    if (WaitFor(server_pid_, absl::Seconds(20)) < 0) KillGroup(server_pid_);
    server_pid_ = -1;
  }
  if (epmd_pid_ > 0) {
    ::kill(epmd_pid_, SIGTERM);
    if (WaitFor(epmd_pid_, absl::Seconds(5)) < 0) {
      ::kill(epmd_pid_, SIGKILL);
      WaitFor(epmd_pid_, absl::Seconds(5));
    }
    epmd_pid_ = -1;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    dir_.clear();
  }
}

PrivateRabbitMq::~PrivateRabbitMq() { Stop(); }

// --- Durable publishing with publisher confirms
// -------------------------------

#if WARREN_HAVE_RABBITMQ_C
namespace {

// One connection with channel 1 open; closed by the destructor.
class ConfirmConnection {
 public:
  static std::unique_ptr<ConfirmConnection> Open(int port, std::string* error) {
    std::unique_ptr<ConfirmConnection> c(new ConfirmConnection());
    c->conn_ = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(c->conn_);
    if (socket == nullptr ||
        amqp_socket_open(socket, "127.0.0.1", port) != AMQP_STATUS_OK) {
      *error = "cannot open a TCP connection to 127.0.0.1";
      return nullptr;
    }
    c->open_ = true;
    const amqp_rpc_reply_t r = amqp_login(
        c->conn_, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      *error = "login failed";
      return nullptr;
    }
    amqp_channel_open(c->conn_, 1);
    if (!c->RpcOk()) {
      *error = "channel.open failed";
      return nullptr;
    }
    c->channel_open_ = true;
    return c;
  }
  ~ConfirmConnection() {
    if (channel_open_) amqp_channel_close(conn_, 1, AMQP_REPLY_SUCCESS);
    if (open_) amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    if (conn_ != nullptr) amqp_destroy_connection(conn_);
  }
  ConfirmConnection(const ConfirmConnection&) = delete;
  ConfirmConnection& operator=(const ConfirmConnection&) = delete;

  amqp_connection_state_t get() const { return conn_; }
  bool RpcOk() {
    return amqp_get_rpc_reply(conn_).reply_type == AMQP_RESPONSE_NORMAL;
  }
  // After the server closed the channel, do not try to close it again.
  void ChannelLost() { channel_open_ = false; }

 private:
  ConfirmConnection() = default;
  amqp_connection_state_t conn_ = nullptr;
  bool open_ = false;
  bool channel_open_ = false;
};

}  // namespace

bool AmqpPrepareDurableQueue(int port, const std::string& queue,
                             std::string* error) {
  auto c = ConfirmConnection::Open(port, error);
  if (c == nullptr) return false;
  amqp_queue_declare(c->get(), 1, amqp_cstring_bytes(queue.c_str()),
                     /*passive=*/0, /*durable=*/1, /*exclusive=*/0,
                     /*auto_delete=*/0, amqp_empty_table);
  if (!c->RpcOk()) {
    c->ChannelLost();
    *error = "queue.declare (durable) failed";
    return false;
  }
  amqp_queue_purge(c->get(), 1, amqp_cstring_bytes(queue.c_str()));
  if (!c->RpcOk()) {
    c->ChannelLost();
    *error = "queue.purge failed";
    return false;
  }
  return true;
}

double AmqpPersistentPublish(int port, const std::string& queue,
                             size_t body_size, uint32_t window, double seconds,
                             std::string* error) {
  auto c = ConfirmConnection::Open(port, error);
  if (c == nullptr) return 0;
  amqp_confirm_select(c->get(), 1);
  if (!c->RpcOk()) {
    c->ChannelLost();
    *error = "confirm.select failed";
    return 0;
  }
  if (window == 0) window = 1;
  std::string body(body_size, 'x');
  amqp_basic_properties_t props{};
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;  // persistent
  const amqp_bytes_t routing_key = amqp_cstring_bytes(queue.c_str());

  // Delivery tags count publishes from 1; the server confirms them in order
  // for one queue, singly or with `multiple` up to a tag.
  uint64_t published = 0;
  uint64_t confirmed = 0;
  using SteadyClock = std::chrono::steady_clock;
  const auto t0 = SteadyClock::now();
  const auto stop_at = t0 + std::chrono::duration_cast<SteadyClock::duration>(
                                std::chrono::duration<double>(seconds));
  bool publishing = true;
  while (publishing || confirmed < published) {
    while (publishing && published - confirmed < window) {
      // Vary the first bytes so that no two bodies are equal.
      std::memcpy(body.data(), &published,
                  std::min(sizeof(published), body.size()));
      const amqp_bytes_t bytes{body.size(), body.data()};
      if (amqp_basic_publish(c->get(), 1, amqp_empty_bytes, routing_key,
                             /*mandatory=*/0, /*immediate=*/0, &props,
                             bytes) != AMQP_STATUS_OK) {
        *error = "basic.publish failed";
        return 0;
      }
      ++published;
      if (SteadyClock::now() >= stop_at) publishing = false;
    }
    if (confirmed >= published) break;
    amqp_frame_t frame;
    timeval timeout{30, 0};
    const int rc = amqp_simple_wait_frame_noblock(c->get(), &frame, &timeout);
    if (rc != AMQP_STATUS_OK) {
      *error = fmt::format("no confirm ({}) after {} of {} messages",
                           amqp_error_string2(rc), confirmed, published);
      return 0;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) continue;
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        const auto* ack =
            static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
        confirmed = std::max<uint64_t>(confirmed, ack->delivery_tag);
        break;
      }
      case AMQP_BASIC_NACK_METHOD:
        *error = "basic.nack: the server refused a persistent message";
        return 0;
      case AMQP_CHANNEL_CLOSE_METHOD:
        c->ChannelLost();
        *error = "the server closed the channel";
        return 0;
      default:
        break;
    }
    amqp_maybe_release_buffers(c->get());
    if (SteadyClock::now() >= stop_at) publishing = false;
  }
  const double secs =
      std::chrono::duration<double>(SteadyClock::now() - t0).count();
  return secs > 0 ? static_cast<double>(confirmed) / secs : 0;
}

#else  // !WARREN_HAVE_RABBITMQ_C

bool AmqpPrepareDurableQueue(int, const std::string&, std::string* error) {
  *error = "not built (install librabbitmq-dev)";
  return false;
}

double AmqpPersistentPublish(int, const std::string&, size_t, uint32_t, double,
                             std::string* error) {
  *error = "not built (install librabbitmq-dev)";
  return 0;
}

#endif  // WARREN_HAVE_RABBITMQ_C

}  // namespace warren_bench
